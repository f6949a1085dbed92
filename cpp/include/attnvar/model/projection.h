// Linear projections of a pass's tokens: y = x Wᵀ (+ b).
#pragma once

#include <ATen/core/Tensor.h>

namespace attnvar {

// x: (T, in), w: (out, in), b: (out,) or undefined -> (T, out), contiguous.
// For a handful of rows (a parallel set's members) the weight-major product (W xᵀ)ᵀ
// streams W faster than linear()'s gemm: ~30 % less time for 2–8 rows on SmolLM2's
// shapes (bench/microbench_linear.py). One row stays a matrix-vector product.
at::Tensor project(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});

}  // namespace attnvar

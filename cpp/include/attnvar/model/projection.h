// Linear projections of a pass's tokens: y = x Wᵀ (+ b).
#pragma once

#include <ATen/core/Tensor.h>

namespace attnvar {

// x: (T, in), w: (out, in), b: (out,) or undefined -> (T, out), contiguous.
// x may have strided rows (unit stride within a row). Up to 16 rows of f32 on the CPU (a
// decode step, a parallel set's members) go through gemv_rows, which reads w once for all
// rows; BLAS gemm for small M re-reads it and costs ~2× at 4 rows. More rows, other dtypes
// and devices: linear().
at::Tensor project(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});

}  // namespace attnvar

// Linear projections of a pass's tokens: y = x Wᵀ (+ b).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "attnvar/model/linear.h"

namespace attnvar {

// x: (T, in), w: (out, in), b: (out,) or undefined -> (T, out), contiguous.
// x may have strided rows (unit stride within a row). Up to 16 rows of f32 on the CPU (a
// decode step, a parallel set's members) go through gemv_rows, which reads w once for all
// rows; BLAS gemm for small M re-reads it and costs ~2× at 4 rows. More rows, other dtypes
// and devices: linear().
at::Tensor project(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b = {});

// The rows of several independent sequences in one call, each row's result bit for bit
// what project() gives it in its own sequence's call: x holds the sequences' rows one
// after another, `rows` their counts (summing to x.size(0)). Rows of sequences that
// project() would send through gemv_rows (which gives every row the same result whatever
// rows share the call) are gathered across sequences into calls of up to 16 rows, so the
// weight is read once per 16 rows instead of once per sequence; a sequence that project()
// would give to linear() (more rows, other dtypes or devices) gets its own call.
at::Tensor project_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                            const at::Tensor& w, const at::Tensor& b = {});

// The same for a Linear weight. Quantized parts give, bit for bit, what the f32 weight
// they dequantize to gives: up to 16 f32 CPU rows through qgemv_rows, anything else
// through linear() on the dequantized matrix.
at::Tensor project(const at::Tensor& x, const Linear& w, const at::Tensor& b = {});
at::Tensor project_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                            const Linear& w, const at::Tensor& b = {});

}  // namespace attnvar

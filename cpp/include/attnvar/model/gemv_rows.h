// A few rows times a row-major f32 weight matrix, reading the weight from memory once:
// the projections of a parallel set (k ≤ 16 members) are bound by streaming the weights,
// and a gemm that re-reads them per row tile, as BLAS does for small M, wastes bandwidth.
#pragma once

#include <cstdint>

namespace attnvar {

enum class GemvRowsKernel {
  kAuto,      // AVX2 + FMA when the CPU has them (checked at run time), else portable
  kPortable,  // plain C++ (what runs on CPUs without AVX2/FMA); for tests
  kAvx2,      // as kAuto, but no AVX-512 kernels where the CPU has them (qgemv_rows' fused
              // tiles; gemv_rows has none): the AVX2 fallback, for tests
};

// y[r, o] = Σ_i x[r, i] · w[o, i] (+ bias[o]) for r < rows, o < out, i < in.
//   x: (rows, in), row stride ldx ≥ in (elements), unit stride within a row
//   w: (out, in), row stride ldw ≥ in, unit stride within a row
//   bias: (out,) or nullptr
//   y: (rows, out), row stride ldy ≥ out; must not overlap x, w or bias
// Each run of weight rows is loaded from memory once and multiplied with every row of x
// while it sits in L1 (one weight row against all rows for 2-5 rows, a block of eight
// weight rows against each row in turn for 1 and 6-16 rows), so for up to ~4 rows the time
// stays near one read of w; beyond that the multiply-adds set it.
// Outputs are split across the intra-op threads (at::parallel_for). Deterministic: a row's
// result depends neither on the other rows nor on the thread count (each output is summed
// by one thread in a fixed order).
void gemv_rows(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t ldw, int64_t out,
               int64_t in, const float* bias, float* y, int64_t ldy,
               GemvRowsKernel kernel = GemvRowsKernel::kAuto);

// The same product for outputs [o_begin, o_end) only, on the calling thread (the caller
// splits outputs across threads): y[r, o] and bias[o] for o in that range. Each output's
// value is the one gemv_rows gives it, whatever the range (the quantized projection runs
// the kernel on small decoded blocks of weight rows and relies on this).
void gemv_rows_range(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t ldw,
                     int64_t o_begin, int64_t o_end, int64_t in, const float* bias, float* y,
                     int64_t ldy, GemvRowsKernel kernel = GemvRowsKernel::kAuto);

// The kernel kAuto picks on this CPU: "avx2+fma" or "portable".
const char* gemv_rows_auto_kernel();

}  // namespace attnvar

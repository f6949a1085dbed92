// A linear weight kept in its GGUF blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
// instead of f32: a quarter to an eighth of the bytes to hold and to stream per decode step.
//
// Products are exact to the f32 path: a block of weight rows is decoded (AVX2 where the CPU
// has it) into a small f32 buffer with the same operations dequantize_row uses, and the
// f32 kernel (gemv_rows) multiplies it; so every output is bit for bit what the f32 model
// built from the dequantized file computes, and the two weight modes generate the same
// tokens. Up to 16 rows go through that path; more rows (a prefill, a replay) dequantize
// the whole matrix for one BLAS call, exactly as the f32 path calls it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "attnvar/model/gemv_rows.h"

namespace attnvar {

// Whether a weight of this ggml type can stay in its blocks.
bool ggml_type_projectable(uint32_t type);

struct QuantizedMatrix {
  at::Tensor blocks;  // (rows, row_bytes) uint8, contiguous, on the CPU: row o's blocks
  uint32_t type = 0;  // ggml type (ggml_type_projectable)
  int64_t cols = 0;   // elements per row (a multiple of the type's block size)

  int64_t rows() const { return blocks.size(0); }
  int64_t row_bytes() const { return blocks.size(1); }
};

// Checks the blocks' shape against type and cols (FormatError naming `what`).
void check_quantized(const QuantizedMatrix& m, const char* what);

// Rows [begin, begin + n) decoded into dst (n rows of m.cols floats), bit for bit what
// dequantize_row gives; AVX2 when `kernel` is kAuto and the CPU has it.
void dequantize_rows(const QuantizedMatrix& m, int64_t begin, int64_t n, float* dst,
                     GemvRowsKernel kernel = GemvRowsKernel::kAuto);

// The whole matrix as (rows, cols) f32.
at::Tensor dequantize(const QuantizedMatrix& m);
// The same into dst (m.rows() rows of m.cols floats), rows split across threads.
void dequantize_into(const QuantizedMatrix& m, float* dst);

// y[r, o] = Σ_i x[r, i] · W[o, i] (+ bias[o]) for r < rows (≤ 16 is the intended use), the
// outputs split across threads; bit for bit gemv_rows on dequantize(m) with the same kernel.
// x: (rows, m.cols) with row stride ldx; y: (rows, m.rows()) with row stride ldy.
void qgemv_rows(const float* x, int64_t ldx, int64_t rows, const QuantizedMatrix& m,
                const float* bias, float* y, int64_t ldy,
                GemvRowsKernel kernel = GemvRowsKernel::kAuto);

// The same for matrices stacked along their rows (parts of one weight, all with the same
// cols; their own types): outputs of part i follow those of parts 0..i−1 in y and bias.
// One parallel region for all of them.
void qgemv_rows(const float* x, int64_t ldx, int64_t rows,
                const std::vector<QuantizedMatrix>& parts, const float* bias, float* y,
                int64_t ldy, GemvRowsKernel kernel = GemvRowsKernel::kAuto);

}  // namespace attnvar

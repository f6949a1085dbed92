// A linear weight kept in its GGUF blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)
// instead of f32: a quarter to an eighth of the bytes to hold and to stream per decode step.
//
// Products are exact to the f32 path: the weights are decoded with the same operations
// dequantize_row uses (AVX2 + F16C where the CPU has them), and multiplied with gemv_rows'
// multiply-adds in gemv_rows' order: the 32-element types in registers, a tile of weight
// rows against a group of rows of x (wider tiles with AVX-512VL's 32 registers), the K
// types from a small f32 buffer by gemv_rows itself. So every output is bit for bit what
// the f32 model built from the dequantized file computes, whatever the rows in the call,
// and the two weight modes generate the same tokens. Up to 16 rows go through that path;
// more rows (a prefill, a replay) dequantize the whole matrix for one BLAS call, exactly as
// the f32 path calls it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
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

// The kernels kAuto picks on this CPU for the 32-element types: "avx512vl" (AVX2 + FMA +
// F16C code with AVX-512VL's 32 registers), "avx2+fma" or "portable".
const char* qgemv_rows_auto_kernel();

// The register tiles kAuto's fused kernels use for `rows` rows of x of `in` columns, as
// rows x weight rows per tile for each group of rows: "8x2 + 8x2" for 16 rows with
// AVX-512VL. For benchmarks.
std::string qgemv_rows_tiles(int64_t rows, int64_t in);

namespace detail {
// f16 bit patterns h[0 .. n) to float with the CPU's F16C instructions as the AVX2 decoders
// use them: the eight-lane broadcast of the 32-element types' scales (lane 0 into
// vector_out) and the scalar conversion of the K types' (scalar_out). False (nothing
// written) where the CPU lacks F16C. For tests.
bool half_to_float_f16c(const uint16_t* h, int64_t n, float* vector_out, float* scalar_out);
// Blocks [0, n) of a 32-element type decoded by the AVX-512VL tiles' decoders (for Q4_1 the
// table lookups), 32 floats per block into out: the 256-bit decoder, or with `wide` the
// 512-bit one, each chunk taken from both halves of its register (a half that differs from
// the low one gives NaN there with a set sign and payload 0x7FF, so a test sees it).
// False (nothing written) without AVX-512VL or for another type.
bool decode_blocks_avx512(uint32_t type, const uint8_t* blocks, int64_t n, bool wide,
                          float* out);
}  // namespace detail

}  // namespace attnvar

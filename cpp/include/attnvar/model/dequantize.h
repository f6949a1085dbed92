// ggml tensor types: block layouts, sizes, and dequantization to f32. Torch-free.
//
// A ggml row of n elements is n / block_size blocks of type_size bytes each. The
// results are bit-identical to the `gguf` Python package's `gguf.quants.dequantize`
// (same f32 operations in the same order; this file is compiled without FMA
// contraction so `d * q + m` rounds twice, as numpy does).
#pragma once

#include <cstdint>
#include <string>

namespace attnvar {

// Layout of one ggml type: `block_size` elements are stored in `type_size` bytes.
struct GgmlTypeTraits {
  const char* name;  // as ggml and the gguf package spell it: "Q4_1", "BF16", ...
  int64_t block_size;
  int64_t type_size;
  bool dequantizable;  // dequantize_row supports it
};

// Traits of a type number; nullptr for a number this library does not know.
const GgmlTypeTraits* ggml_type_traits(uint32_t type);

// The name ("Q4_1"), or "type<N>" for an unknown number.
std::string ggml_type_name(uint32_t type);

// Elements per block / bytes per block. FormatError for an unknown type.
int64_t ggml_block_size(uint32_t type);
int64_t ggml_type_size(uint32_t type);

// Bytes of `n_elements` elements of `type`. FormatError for an unknown type or when
// n_elements is negative or not a multiple of the block size.
uint64_t ggml_nbytes(uint32_t type, int64_t n_elements);

// Whether dequantize_row supports `type`: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
// Q4_K, Q5_K, Q6_K.
bool ggml_can_dequantize(uint32_t type);

// Decodes `n_elements` consecutive elements of `type` from `src` (ggml_nbytes(type,
// n_elements) bytes, any alignment) into `dst` (n_elements floats). n_elements must be a
// multiple of the block size. FormatError for an unsupported type or a bad count.
void dequantize_row(uint32_t ggml_type, const void* src, int64_t n_elements, float* dst);

// Q4_K / Q5_K: the 6-bit scale and min of sub-block i (0..7) from a super-block's 12 packed
// scale bytes.
void ggml_scale_min_k4(const uint8_t* scales, int i, float* sc, float* m);

// IEEE half / bfloat16 bit patterns to float (exact).
float half_to_float(uint16_t h);
float bf16_to_float(uint16_t h);

}  // namespace attnvar

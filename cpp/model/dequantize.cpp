// Block layouts (ggml, as documented by the GGUF spec and the gguf package):
//   Q4_0  32 elements, 18 B: f16 d, u8 qs[16]            x = d * (q - 8)
//   Q4_1  32 elements, 20 B: f16 d, f16 m, u8 qs[16]     x = d * q + m
//   Q5_0  32 elements, 22 B: f16 d, u32 qh, u8 qs[16]    x = d * (q - 16)
//   Q5_1  32 elements, 24 B: f16 d, f16 m, u32 qh, qs[16] x = d * q + m
//   Q8_0  32 elements, 34 B: f16 d, i8 qs[32]            x = d * q
// In the 32-element types, element j < 16 is the low nibble of qs[j] and element j + 16
// the high nibble; the 5th bit of element i is bit i of qh (little-endian u32).
//   Q4_K 256 elements, 144 B: f16 d, f16 dmin, u8 scales[12], u8 qs[128]
//   Q5_K 256 elements, 176 B: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
//     8 sub-blocks of 32, each with a 6-bit scale and 6-bit min packed in `scales`;
//     x = (d * sc) * q - (dmin * m). qs byte 32c + l holds sub-block 2c (low nibble)
//     and 2c + 1 (high nibble); Q5_K's 5th bit of sub-block s is bit s of qh[l].
//   Q6_K 256 elements, 210 B: u8 ql[128], u8 qh[64], i8 scales[16], f16 d
//     two halves of 128; 16 scales of 16 elements each; x = (d * sc) * (q - 32).
#include "attnvar/model/dequantize.h"

#include <fmt/format.h>

#include <array>
#include <cstring>

#include "attnvar/error.h"
#include "attnvar/model/gguf.h"

namespace attnvar {
namespace {

constexpr int64_t kQK = 32;     // elements per block of the 32-element types
constexpr int64_t kQK_K = 256;  // elements per super-block of the K types

struct TypeEntry {
  uint32_t number;
  GgmlTypeTraits traits;
};

// Every type number the gguf package (0.19) knows, so files with exotic types still open
// (their tensors just cannot be dequantized).
constexpr std::array<TypeEntry, 34> kTypes{{
    {0, {"F32", 1, 4, true}},          {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 18, true}},       {3, {"Q4_1", 32, 20, true}},
    {6, {"Q5_0", 32, 22, true}},       {7, {"Q5_1", 32, 24, true}},
    {8, {"Q8_0", 32, 34, true}},       {9, {"Q8_1", 32, 40, false}},
    {10, {"Q2_K", 256, 84, false}},    {11, {"Q3_K", 256, 110, false}},
    {12, {"Q4_K", 256, 144, true}},    {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},    {15, {"Q8_K", 256, 292, false}},
    {16, {"IQ2_XXS", 256, 66, false}}, {17, {"IQ2_XS", 256, 74, false}},
    {18, {"IQ3_XXS", 256, 98, false}}, {19, {"IQ1_S", 256, 50, false}},
    {20, {"IQ4_NL", 32, 18, false}},   {21, {"IQ3_S", 256, 110, false}},
    {22, {"IQ2_S", 256, 82, false}},   {23, {"IQ4_XS", 256, 136, false}},
    {24, {"I8", 1, 1, false}},         {25, {"I16", 1, 2, false}},
    {26, {"I32", 1, 4, false}},        {27, {"I64", 1, 8, false}},
    {28, {"F64", 1, 8, false}},        {29, {"IQ1_M", 256, 56, false}},
    {30, {"BF16", 1, 2, true}},        {34, {"TQ1_0", 256, 54, false}},
    {35, {"TQ2_0", 256, 66, false}},   {39, {"MXFP4", 32, 17, false}},
    {40, {"NVFP4", 64, 36, false}},    {41, {"Q1_0", 128, 18, false}},
}};

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);  // files are little-endian, as is every host we build for
  return v;
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

float load_half(const uint8_t* p) { return half_to_float(load_u16(p)); }

void scale_min_k4(const uint8_t* s, int i, float* sc, float* m) { ggml_scale_min_k4(s, i, sc, m); }

void dequant_q4_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const uint8_t* qs = b + 2;  // (16,)
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0xF) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

void dequant_q4_1(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const float m = load_half(b + 2);
  const uint8_t* qs = b + 4;  // (16,)
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0xF) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

void dequant_q5_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;  // (16,)
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void dequant_q5_1(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const float m = load_half(b + 2);
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;  // (16,)
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0xF) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

void dequant_q8_0(const uint8_t* b, float* y) {
  const float d = load_half(b);
  for (int j = 0; j < 32; ++j) {
    y[j] = d * static_cast<float>(static_cast<int8_t>(b[2 + j]));
  }
}

void dequant_q4_k(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const float dmin = load_half(b + 2);
  const uint8_t* scales = b + 4;  // (12,)
  const uint8_t* qs = b + 16;     // (128,) = 4 chunks of 32 bytes, 2 sub-blocks each
  for (int c = 0; c < 4; ++c) {
    float sc0, m0, sc1, m1;
    scale_min_k4(scales, 2 * c, &sc0, &m0);
    scale_min_k4(scales, 2 * c + 1, &sc1, &m1);
    const float d0 = d * sc0, dm0 = dmin * m0;
    const float d1 = d * sc1, dm1 = dmin * m1;
    const uint8_t* q = qs + 32 * c;
    float* out = y + 64 * c;
    for (int l = 0; l < 32; ++l) {
      out[l] = d0 * static_cast<float>(q[l] & 0xF) - dm0;
      out[l + 32] = d1 * static_cast<float>(q[l] >> 4) - dm1;
    }
  }
}

void dequant_q5_k(const uint8_t* b, float* y) {
  const float d = load_half(b);
  const float dmin = load_half(b + 2);
  const uint8_t* scales = b + 4;  // (12,)
  const uint8_t* qh = b + 16;     // (32,): bit s of qh[l] is the 5th bit of sub-block s
  const uint8_t* qs = b + 48;     // (128,)
  for (int c = 0; c < 4; ++c) {
    float sc0, m0, sc1, m1;
    scale_min_k4(scales, 2 * c, &sc0, &m0);
    scale_min_k4(scales, 2 * c + 1, &sc1, &m1);
    const float d0 = d * sc0, dm0 = dmin * m0;
    const float d1 = d * sc1, dm1 = dmin * m1;
    const uint8_t* q = qs + 32 * c;
    float* out = y + 64 * c;
    for (int l = 0; l < 32; ++l) {
      const int lo = (q[l] & 0xF) | (((qh[l] >> (2 * c)) & 1) << 4);
      const int hi = (q[l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4);
      out[l] = d0 * static_cast<float>(lo) - dm0;
      out[l + 32] = d1 * static_cast<float>(hi) - dm1;
    }
  }
}

void dequant_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;                                        // (128,)
  const uint8_t* qh = b + 128;                                  // (64,)
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);  // (16,)
  const float d = load_half(b + 208);
  for (int h = 0; h < 2; ++h) {  // two halves of 128 elements
    const uint8_t* l4 = ql + 64 * h;
    const uint8_t* h2 = qh + 32 * h;
    float* out = y + 128 * h;
    for (int e = 0; e < 128; ++e) {
      // Low 4 bits: nibble (e / 64) of l4[e % 64]; high 2 bits: pair (e / 32) of h2[e % 32].
      const int low = (e < 64) ? (l4[e] & 0xF) : (l4[e - 64] >> 4);
      const int high = (h2[e % 32] >> (2 * (e / 32))) & 3;
      const int q = (low | (high << 4)) - 32;
      const float ds = d * static_cast<float>(sc[(128 * h + e) / 16]);
      out[e] = ds * static_cast<float>(q);
    }
  }
}

template <typename BlockFn>
void for_blocks(const uint8_t* src, int64_t n_elements, int64_t block, int64_t bytes, float* dst,
                BlockFn fn) {
  const int64_t n_blocks = n_elements / block;
  for (int64_t i = 0; i < n_blocks; ++i) fn(src + i * bytes, dst + i * block);
}

}  // namespace

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / nan (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);  // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // signed zero
  } else {
    // Subnormal half: normalise the mantissa into an f32 normal number.
    int e = 113;  // 127 - 15 + 1
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (static_cast<uint32_t>(e) << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Bytes 0-3 hold scales 0-3 (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the
// same for mins; bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and of mins 4-7
// (high nibble).
void ggml_scale_min_k4(const uint8_t* s, int i, float* sc, float* m) {
  if (i < 4) {
    *sc = static_cast<float>(s[i] & 63);
    *m = static_cast<float>(s[i + 4] & 63);
  } else {
    *sc = static_cast<float>((s[i + 4] & 0xF) | ((s[i - 4] >> 6) << 4));
    *m = static_cast<float>((s[i + 4] >> 4) | ((s[i] >> 6) << 4));
  }
}

float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

const GgmlTypeTraits* ggml_type_traits(uint32_t type) {
  for (const auto& e : kTypes) {
    if (e.number == type) return &e.traits;
  }
  return nullptr;
}

std::string ggml_type_name(uint32_t type) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  return t ? std::string(t->name) : fmt::format("type{}", type);
}

int64_t ggml_block_size(uint32_t type) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  if (!t) throw FormatError(fmt::format("unknown ggml tensor type {}", type));
  return t->block_size;
}

int64_t ggml_type_size(uint32_t type) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  if (!t) throw FormatError(fmt::format("unknown ggml tensor type {}", type));
  return t->type_size;
}

uint64_t ggml_nbytes(uint32_t type, int64_t n_elements) {
  const int64_t block = ggml_block_size(type);
  if (n_elements < 0 || n_elements % block != 0) {
    throw FormatError(fmt::format("{} element count {} is not a multiple of its block size {}",
                                  ggml_type_name(type), n_elements, block));
  }
  return static_cast<uint64_t>(n_elements / block) * static_cast<uint64_t>(ggml_type_size(type));
}

bool ggml_can_dequantize(uint32_t type) {
  const GgmlTypeTraits* t = ggml_type_traits(type);
  return t && t->dequantizable;
}

void dequantize_row(uint32_t ggml_type, const void* src, int64_t n_elements, float* dst) {
  if (!ggml_can_dequantize(ggml_type)) {
    throw FormatError(fmt::format(
        "cannot dequantize tensor type {} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, "
        "Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)",
        ggml_type_name(ggml_type)));
  }
  ggml_nbytes(ggml_type, n_elements);  // validates the count against the block size
  if (n_elements == 0) return;         // (an empty tensor's buffers may be null)
  const auto* s = static_cast<const uint8_t*>(src);
  switch (static_cast<GgmlType>(ggml_type)) {
    case GgmlType::F32:
      std::memcpy(dst, s, static_cast<size_t>(n_elements) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n_elements; ++i) dst[i] = load_half(s + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n_elements; ++i) dst[i] = bf16_to_float(load_u16(s + 2 * i));
      return;
    case GgmlType::Q4_0:
      return for_blocks(s, n_elements, kQK, 18, dst, dequant_q4_0);
    case GgmlType::Q4_1:
      return for_blocks(s, n_elements, kQK, 20, dst, dequant_q4_1);
    case GgmlType::Q5_0:
      return for_blocks(s, n_elements, kQK, 22, dst, dequant_q5_0);
    case GgmlType::Q5_1:
      return for_blocks(s, n_elements, kQK, 24, dst, dequant_q5_1);
    case GgmlType::Q8_0:
      return for_blocks(s, n_elements, kQK, 34, dst, dequant_q8_0);
    case GgmlType::Q4_K:
      return for_blocks(s, n_elements, kQK_K, 144, dst, dequant_q4_k);
    case GgmlType::Q5_K:
      return for_blocks(s, n_elements, kQK_K, 176, dst, dequant_q5_k);
    case GgmlType::Q6_K:
      return for_blocks(s, n_elements, kQK_K, 210, dst, dequant_q6_k);
    default:
      break;
  }
  throw FormatError(fmt::format("cannot dequantize tensor type {}", ggml_type_name(ggml_type)));
}

}  // namespace attnvar

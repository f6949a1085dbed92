// Block layouts: dequantize.cpp. Every decoder here computes each element with the f32
// operations dequantize_row uses, in the same order (this file, like that one, is compiled
// without multiply-add contraction), so the floats are identical; only the width differs.
#include "attnvar/model/quantized_matrix.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "model/gemv_tile_avx2.h"
#define ATTNVAR_QUANT_X86 1
#endif

#include <algorithm>
#include <cstring>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/model/dequantize.h"
#include "attnvar/model/gguf.h"

namespace attnvar {
namespace {

float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_to_float(h);
}

#ifdef ATTNVAR_QUANT_X86
#define ATTNVAR_AVX2 __attribute__((target("avx2")))

// Eight bytes (the low half of `bytes`) as eight floats: unsigned, or signed.
ATTNVAR_AVX2 inline __m256i widen_u8(__m128i bytes) { return _mm256_cvtepu8_epi32(bytes); }
ATTNVAR_AVX2 inline __m128i high8(__m128i bytes) { return _mm_srli_si128(bytes, 8); }
ATTNVAR_AVX2 inline __m256 to_float(__m256i v) { return _mm256_cvtepi32_ps(v); }

// The 32 elements of a 16-byte nibble array: element j < 16 is the low nibble of byte j,
// element j + 16 the high nibble; as four groups of eight int32.
struct Nibbles {
  __m128i lo, hi;
};
ATTNVAR_AVX2 inline Nibbles split_nibbles(const uint8_t* qs) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0F);
  return {_mm_and_si128(v, mask), _mm_and_si128(_mm_srli_epi16(v, 4), mask)};
}
ATTNVAR_AVX2 inline __m256i nibble_group(const Nibbles& n, int k) {
  switch (k) {
    case 0:
      return widen_u8(n.lo);
    case 1:
      return widen_u8(high8(n.lo));
    case 2:
      return widen_u8(n.hi);
    default:
      return widen_u8(high8(n.hi));
  }
}
// Bits e .. e + 7 of qh as eight int32 0/1, shifted to bit 4 (the fifth bit of Q5 values).
ATTNVAR_AVX2 inline __m256i fifth_bits(uint32_t qh, int e) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i bits = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(qh >> e)), lanes),
      _mm256_set1_epi32(1));
  return _mm256_slli_epi32(bits, 4);
}

// One 32-element block (Q4_0 .. Q8_0) into four registers of eight floats (elements 0-7,
// 8-15, 16-23, 24-31), for the fused kernel below and for the decoders into memory.
ATTNVAR_AVX2 inline void regs_q4_0(const uint8_t* b, __m256* w) {
  const __m256 d = _mm256_set1_ps(half_at(b));
  const Nibbles n = split_nibbles(b + 2);
  const __m256i eight = _mm256_set1_epi32(8);
  for (int k = 0; k < 4; ++k) {
    w[k] = _mm256_mul_ps(d, to_float(_mm256_sub_epi32(nibble_group(n, k), eight)));
  }
}

ATTNVAR_AVX2 inline void regs_q4_1(const uint8_t* b, __m256* w) {
  const __m256 d = _mm256_set1_ps(half_at(b));
  const __m256 m = _mm256_set1_ps(half_at(b + 2));
  const Nibbles n = split_nibbles(b + 4);
  for (int k = 0; k < 4; ++k) w[k] = _mm256_add_ps(_mm256_mul_ps(d, to_float(nibble_group(n, k))), m);
}

ATTNVAR_AVX2 inline void regs_q5_0(const uint8_t* b, __m256* w) {
  const __m256 d = _mm256_set1_ps(half_at(b));
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const Nibbles n = split_nibbles(b + 6);
  const __m256i sixteen = _mm256_set1_epi32(16);
  for (int k = 0; k < 4; ++k) {
    const __m256i q = _mm256_or_si256(nibble_group(n, k), fifth_bits(qh, 8 * k));
    w[k] = _mm256_mul_ps(d, to_float(_mm256_sub_epi32(q, sixteen)));
  }
}

ATTNVAR_AVX2 inline void regs_q5_1(const uint8_t* b, __m256* w) {
  const __m256 d = _mm256_set1_ps(half_at(b));
  const __m256 m = _mm256_set1_ps(half_at(b + 2));
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const Nibbles n = split_nibbles(b + 8);
  for (int k = 0; k < 4; ++k) {
    const __m256i q = _mm256_or_si256(nibble_group(n, k), fifth_bits(qh, 8 * k));
    w[k] = _mm256_add_ps(_mm256_mul_ps(d, to_float(q)), m);
  }
}

ATTNVAR_AVX2 inline void regs_q8_0(const uint8_t* b, __m256* w) {
  const __m256 d = _mm256_set1_ps(half_at(b));
  for (int k = 0; k < 4; ++k) {
    const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * k));
    w[k] = _mm256_mul_ps(d, to_float(_mm256_cvtepi8_epi32(q)));
  }
}

using RegsFn = void (*)(const uint8_t*, __m256*);

template <RegsFn Regs>
ATTNVAR_AVX2 void block_32(const uint8_t* b, float* y) {
  __m256 w[4];
  Regs(b, w);
  for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + 8 * k, w[k]);
}

// R rows of x against O weight rows of a 32-element block type, each block decoded in
// registers once for all R rows: per accumulator the same multiply-adds in the same order
// as gemv_rows' tiles on the decoded weights (eight columns at a time, ascending), then the
// same horizontal sums; so the outputs equal gemv_rows' bit for bit.
template <RegsFn Regs, int R, int O>
ATTNVAR_AVX2_FMA void fused_tile(const float* x, int64_t ldx, const uint8_t* w, int64_t row_bytes,
                             int64_t block_bytes, int64_t blocks, const float* bias, float* y,
                             int64_t ldy) {
  __m256 acc[O * R];
  for (int j = 0; j < O * R; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    for (int o = 0; o < O; ++o) {
      __m256 wv[4];
      Regs(w + o * row_bytes + b * block_bytes, wv);
      for (int k = 0; k < 4; ++k) {
        for (int r = 0; r < R; ++r) {
          const __m256 xv = _mm256_loadu_ps(x + r * ldx + 32 * b + 8 * k);
          acc[o * R + r] = _mm256_fmadd_ps(wv[k], xv, acc[o * R + r]);
        }
      }
    }
  }
  detail::store_tile<R, O>(acc, bias, y, ldy);  // gemv_rows' sums (gemv_tile_avx2.h)
}

// Weight rows [0, n) of a tile against R rows: as many O-row tiles as fit (R·O ≤ 8
// accumulators), then narrower ones.
template <RegsFn Regs, int R>
ATTNVAR_AVX2_FMA void fused_rows(const float* x, int64_t ldx, const uint8_t* w, int64_t row_bytes,
                             int64_t block_bytes, int64_t blocks, int64_t n, const float* bias,
                             float* y, int64_t ldy) {
  int64_t o = 0;
  const auto b = [&](int64_t at) { return bias != nullptr ? bias + at : nullptr; };
  if constexpr (R == 1) {
    for (; o + 8 <= n; o += 8) {
      fused_tile<Regs, 1, 8>(x, ldx, w + o * row_bytes, row_bytes, block_bytes, blocks, b(o),
                             y + o, ldy);
    }
  }
  if constexpr (R <= 2) {
    for (; o + 4 <= n; o += 4) {
      fused_tile<Regs, R, 4>(x, ldx, w + o * row_bytes, row_bytes, block_bytes, blocks, b(o),
                             y + o, ldy);
    }
  }
  if constexpr (R <= 4) {
    for (; o + 2 <= n; o += 2) {
      fused_tile<Regs, R, 2>(x, ldx, w + o * row_bytes, row_bytes, block_bytes, blocks, b(o),
                             y + o, ldy);
    }
  }
  for (; o < n; ++o) {
    fused_tile<Regs, R, 1>(x, ldx, w + o * row_bytes, row_bytes, block_bytes, blocks, b(o),
                           y + o, ldy);
  }
}

template <RegsFn Regs>
ATTNVAR_AVX2_FMA void fused(const float* x, int64_t ldx, int64_t rows, const uint8_t* w,
                        int64_t row_bytes, int64_t block_bytes, int64_t blocks, int64_t n,
                        const float* bias, float* y, int64_t ldy) {
  // Up to eight rows at once (a decode step, a parallel set), in groups of eight beyond.
  for (int64_t r = 0; r < rows; r += 8) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    switch (std::min<int64_t>(8, rows - r)) {
#define ATTNVAR_FUSED_CASE(K)                                                          \
  case K:                                                                              \
    fused_rows<Regs, K>(xr, ldx, w, row_bytes, block_bytes, blocks, n, bias, yr, ldy); \
    break;
      ATTNVAR_FUSED_CASE(1)
      ATTNVAR_FUSED_CASE(2)
      ATTNVAR_FUSED_CASE(3)
      ATTNVAR_FUSED_CASE(4)
      ATTNVAR_FUSED_CASE(5)
      ATTNVAR_FUSED_CASE(6)
      ATTNVAR_FUSED_CASE(7)
      ATTNVAR_FUSED_CASE(8)
#undef ATTNVAR_FUSED_CASE
      default:
        break;
    }
  }
}

// 32 bytes (one per element) as four groups of eight floats: y[l] = scale * q[l] − offset.
ATTNVAR_AVX2 inline void scale_sub_32(__m256i q, float scale, float offset, float* y) {
  const __m256 s = _mm256_set1_ps(scale), o = _mm256_set1_ps(offset);
  const __m128i halves[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
  for (int k = 0; k < 4; ++k) {
    const __m128i bytes = k % 2 == 0 ? halves[k / 2] : high8(halves[k / 2]);
    _mm256_storeu_ps(y + 8 * k, _mm256_sub_ps(_mm256_mul_ps(s, to_float(widen_u8(bytes))), o));
  }
}

// Per byte: (v >> shift) & mask, for shift < 8 (16-bit shifts, then the byte mask drops
// what crossed from the neighbouring byte).
ATTNVAR_AVX2 inline __m256i byte_bits(__m256i v, int shift, int mask) {
  return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)),
                          _mm256_set1_epi8(static_cast<char>(mask)));
}

// One 256-element super-block per call (Q4_K, Q5_K, Q6_K).
ATTNVAR_AVX2 void block_q4_k(const uint8_t* b, float* y) {
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int c = 0; c < 4; ++c) {
    float sc0, m0, sc1, m1;
    ggml_scale_min_k4(scales, 2 * c, &sc0, &m0);
    ggml_scale_min_k4(scales, 2 * c + 1, &sc1, &m1);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
    scale_sub_32(byte_bits(v, 0, 0x0F), d * sc0, dmin * m0, y + 64 * c);
    scale_sub_32(byte_bits(v, 4, 0x0F), d * sc1, dmin * m1, y + 64 * c + 32);
  }
}

ATTNVAR_AVX2 void block_q5_k(const uint8_t* b, float* y) {
  const float d = half_at(b), dmin = half_at(b + 2);
  const uint8_t* scales = b + 4;
  const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
  const uint8_t* qs = b + 48;
  for (int c = 0; c < 4; ++c) {
    float sc0, m0, sc1, m1;
    ggml_scale_min_k4(scales, 2 * c, &sc0, &m0);
    ggml_scale_min_k4(scales, 2 * c + 1, &sc1, &m1);
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
    const __m256i lo = _mm256_or_si256(byte_bits(v, 0, 0x0F),
                                       _mm256_slli_epi16(byte_bits(qh, 2 * c, 1), 4));
    const __m256i hi = _mm256_or_si256(byte_bits(v, 4, 0x0F),
                                       _mm256_slli_epi16(byte_bits(qh, 2 * c + 1, 1), 4));
    scale_sub_32(lo, d * sc0, dmin * m0, y + 64 * c);
    scale_sub_32(hi, d * sc1, dmin * m1, y + 64 * c + 32);
  }
}

ATTNVAR_AVX2 void block_q6_k(const uint8_t* b, float* y) {
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = half_at(b + 208);
  const __m256i thirty_two = _mm256_set1_epi32(32);
  for (int h = 0; h < 2; ++h) {  // two halves of 128 elements
    const auto* ql = reinterpret_cast<const __m256i*>(b + 64 * h);
    const __m256i ql_a = _mm256_loadu_si256(ql), ql_b = _mm256_loadu_si256(ql + 1);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h));
    for (int s = 0; s < 4; ++s) {  // elements 32 s .. 32 s + 31 of the half
      const __m256i low = byte_bits(s % 2 == 0 ? ql_a : ql_b, s < 2 ? 0 : 4, 0x0F);
      const __m256i q = _mm256_or_si256(low, _mm256_slli_epi16(byte_bits(qh, 2 * s, 3), 4));
      const __m128i halves[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
      float* out = y + 128 * h + 32 * s;
      for (int k = 0; k < 4; ++k) {  // 16 elements per scale
        const float ds = d * static_cast<float>(sc[8 * h + 2 * s + k / 2]);
        const __m128i bytes = k % 2 == 0 ? halves[k / 2] : high8(halves[k / 2]);
        const __m256i centred = _mm256_sub_epi32(widen_u8(bytes), thirty_two);
        _mm256_storeu_ps(out + 8 * k, _mm256_mul_ps(_mm256_set1_ps(ds), to_float(centred)));
      }
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*);
using FusedFn = void (*)(const float*, int64_t, int64_t, const uint8_t*, int64_t, int64_t,
                         int64_t, int64_t, const float*, float*, int64_t);

// A type's AVX2 kernels: the decoder of one block into memory, and the fused decode-and-
// multiply of fused_tile, which the 32-element types have (the K types decode into the
// buffer instead: their chunks would re-read a super-block's scales, measured slower).
struct Avx2Kernels {
  BlockFn block = nullptr;
  FusedFn fused = nullptr;
};

Avx2Kernels avx2_kernels(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::Q4_0:
      return {block_32<regs_q4_0>, fused<regs_q4_0>};
    case GgmlType::Q4_1:
      return {block_32<regs_q4_1>, fused<regs_q4_1>};
    case GgmlType::Q5_0:
      return {block_32<regs_q5_0>, fused<regs_q5_0>};
    case GgmlType::Q5_1:
      return {block_32<regs_q5_1>, fused<regs_q5_1>};
    case GgmlType::Q8_0:
      return {block_32<regs_q8_0>, fused<regs_q8_0>};
    case GgmlType::Q4_K:
      return {block_q4_k, nullptr};
    case GgmlType::Q5_K:
      return {block_q5_k, nullptr};
    case GgmlType::Q6_K:
      return {block_q6_k, nullptr};
    default:
      return {};
  }
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// The fused kernel multiplies with FMA, as gemv_rows' AVX2 kernel does: both need it.
bool cpu_has_avx2_fma() {
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("fma");
  return has;
}
#endif  // ATTNVAR_QUANT_X86

// One row of `cols` elements from its blocks.
void decode_row(uint32_t type, const uint8_t* src, int64_t cols, float* dst, bool avx2) {
#ifdef ATTNVAR_QUANT_X86
  if (avx2) {
    const BlockFn fn = avx2_kernels(type).block;
    const int64_t block = ggml_block_size(type), bytes = ggml_type_size(type);
    for (int64_t i = 0; i < cols / block; ++i) fn(src + i * bytes, dst + i * block);
    return;
  }
#endif
  dequantize_row(type, src, cols, dst);
}

bool use_avx2(GemvRowsKernel kernel) {
#ifdef ATTNVAR_QUANT_X86
  return kernel == GemvRowsKernel::kAuto && cpu_has_avx2();
#else
  return false;
#endif
}

}  // namespace

bool ggml_type_projectable(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q5_0:
    case GgmlType::Q5_1:
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

void check_quantized(const QuantizedMatrix& m, const char* what) {
  if (!ggml_type_projectable(m.type)) {
    throw FormatError(fmt::format("{}: type {} cannot stay quantized", what,
                                  ggml_type_name(m.type)));
  }
  if (!m.blocks.defined() || m.blocks.dim() != 2 || m.blocks.scalar_type() != at::kByte ||
      !m.blocks.is_cpu() || !m.blocks.is_contiguous() ||
      m.blocks.size(1) != static_cast<int64_t>(ggml_nbytes(m.type, m.cols))) {
    throw FormatError(fmt::format("{}: {} blocks of {} columns must be a contiguous CPU uint8 "
                                  "(rows, {}) tensor",
                                  what, ggml_type_name(m.type), m.cols,
                                  ggml_nbytes(m.type, m.cols)));
  }
}

void dequantize_rows(const QuantizedMatrix& m, int64_t begin, int64_t n, float* dst,
                     GemvRowsKernel kernel) {
  const bool avx2 = use_avx2(kernel);
  const auto* base = m.blocks.const_data_ptr<uint8_t>();
  const int64_t row_bytes = m.row_bytes();
  for (int64_t r = 0; r < n; ++r) {
    decode_row(m.type, base + (begin + r) * row_bytes, m.cols, dst + r * m.cols, avx2);
  }
}

void dequantize_into(const QuantizedMatrix& m, float* dst) {
  at::parallel_for(0, m.rows(), 16, [&](int64_t begin, int64_t end) {
    dequantize_rows(m, begin, end - begin, dst + begin * m.cols);
  });
}

at::Tensor dequantize(const QuantizedMatrix& m) {
  auto out = at::empty({m.rows(), m.cols}, at::kFloat);
  dequantize_into(m, out.data_ptr<float>());
  return out;
}

void qgemv_rows(const float* x, int64_t ldx, int64_t rows,
                const std::vector<QuantizedMatrix>& parts, const float* bias, float* y,
                int64_t ldy, GemvRowsKernel kernel) {
  if (rows <= 0 || parts.empty()) return;
  const int64_t in = parts.front().cols;
  // Weight rows decoded per step: eight (gemv_rows' widest tile for one row) while they fit
  // in L1/L2 next to each other, four beyond.
  const int64_t tile = in <= 2048 ? 8 : 4;
  // Tiles of every part, numbered one after another: first_tile[i] is part i's first.
  std::vector<int64_t> first_tile(parts.size() + 1, 0), first_row(parts.size() + 1, 0);
  for (size_t i = 0; i < parts.size(); ++i) {
    first_tile[i + 1] = first_tile[i] + (parts[i].rows() + tile - 1) / tile;
    first_row[i + 1] = first_row[i] + parts[i].rows();
  }
  // At least ~64 KB of f32 weights per task, as gemv_rows splits its outputs.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(in, 1) / tile);
#ifdef ATTNVAR_QUANT_X86
  // Each part's fused kernel, looked up once per call (null: decode into the buffer).
  std::vector<FusedFn> fused_of(parts.size(), nullptr);
  if (kernel == GemvRowsKernel::kAuto && cpu_has_avx2_fma()) {
    for (size_t i = 0; i < parts.size(); ++i) fused_of[i] = avx2_kernels(parts[i].type).fused;
  }
#endif
  at::parallel_for(0, first_tile.back(), grain, [&](int64_t t_begin, int64_t t_end) {
    thread_local std::vector<float> buffer;
    buffer.resize(static_cast<size_t>(tile * in));
    size_t i = 0;
    for (int64_t t = t_begin; t < t_end; ++t) {
      while (t >= first_tile[i + 1]) ++i;
      const QuantizedMatrix& m = parts[i];
      const int64_t o = (t - first_tile[i]) * tile, n = std::min(tile, m.rows() - o);
      const int64_t out_row = first_row[i] + o;  // in y and bias
#ifdef ATTNVAR_QUANT_X86
      if (const FusedFn fn = fused_of[i]) {
        const int64_t blocks = in / 32;  // fused types have 32-element blocks
        fn(x, ldx, rows, m.blocks.const_data_ptr<uint8_t>() + o * m.row_bytes(), m.row_bytes(),
           m.row_bytes() / blocks, blocks, n, bias != nullptr ? bias + out_row : nullptr,
           y + out_row, ldy);
        continue;
      }
#endif
      dequantize_rows(m, o, n, buffer.data(), kernel);
      // Row by row against the decoded block, which sits in L1: one row at a time gets
      // gemv_rows' eight-output tiles (eight independent multiply-add chains), where its
      // 2-5-row tiles, made to stream weights from memory, would wait on two to five.
      // Every output is the same whatever the tiling (gemv_rows_range).
      for (int64_t r = 0; r < rows; ++r) {
        gemv_rows_range(x + r * ldx, ldx, 1, buffer.data(), in, 0, n, in,
                        bias != nullptr ? bias + out_row : nullptr, y + r * ldy + out_row, ldy,
                        kernel);
      }
    }
  });
}

void qgemv_rows(const float* x, int64_t ldx, int64_t rows, const QuantizedMatrix& m,
                const float* bias, float* y, int64_t ldy, GemvRowsKernel kernel) {
  qgemv_rows(x, ldx, rows, std::vector<QuantizedMatrix>{m}, bias, y, ldy, kernel);
}

}  // namespace attnvar

// Block layouts: dequantize.cpp. Every decoder here computes each element with the f32
// operations dequantize_row uses, in the same order (this file, like that one, is compiled
// without multiply-add contraction), so the floats are identical; only the width differs.
// (In the fused kernels, compiled for FMA, GCC contracts d·q + m into one multiply-add all
// the same when the file goes through the precompiled header. That rounds alike: d·q is
// exact, an 11-bit f16 significand times an integer of at most 8 bits. Only a NaN's payload
// can differ, for an infinite d times a zero quant plus a NaN m.)
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
#include <type_traits>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/model/dequantize.h"
#include "attnvar/model/gguf.h"

namespace attnvar {
namespace {

#ifdef ATTNVAR_QUANT_X86
// Decoders: AVX2, and F16C for the f16 scales. Half to float is exact either way; the one
// instruction replaces half_to_float's branches, which took 8 % of batched generation's
// time (perf, two calls per Q4_1 block). For a signalling NaN F16C sets the quiet bit that
// half_to_float leaves clear; every scale then goes through a multiply or an add, which
// quiets the NaN in both, so the decoded floats are the same bits (tested on every f16).
#define ATTNVAR_AVX2 __attribute__((target("avx2,f16c")))
// Fused decode-and-multiply: AVX2 + FMA with its 16 ymm registers, or the same 256-bit
// code where AVX-512VL gives 32 ymm registers, for wider register tiles.
#define ATTNVAR_FUSED_AVX2 __attribute__((target("avx2,fma,f16c")))
#define ATTNVAR_FUSED_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512vl")))
#define ATTNVAR_INLINE [[gnu::always_inline]] inline

ATTNVAR_AVX2 inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}
// The f16 at p in all eight lanes: broadcast as f16, then converted (two instructions).
ATTNVAR_AVX2 inline __m256 half8(const uint8_t* p) {
  int16_t h;
  std::memcpy(&h, p, 2);
  return _mm256_cvtph_ps(_mm_set1_epi16(h));
}
// The two f16 at p (d, then m) each in all eight lanes.
ATTNVAR_AVX2 inline void half8x2(const uint8_t* p, __m256* d, __m256* m) {
  int32_t dm;
  std::memcpy(&dm, p, 4);
  const __m256 both = _mm256_cvtph_ps(_mm_set1_epi32(dm));  // d, m, d, m, ...
  *d = _mm256_shuffle_ps(both, both, 0x00);
  *m = _mm256_shuffle_ps(both, both, 0x55);
}

// half8 (lane 0) and half_at of the f16 at p, for detail::half_to_float_f16c.
ATTNVAR_AVX2 void half_f16c(const uint8_t* p, float* vector, float* scalar) {
  *vector = _mm256_cvtss_f32(half8(p));
  *scalar = half_at(p);
}

// Eight bytes (the low half of `bytes`) as eight floats: unsigned, or signed.
ATTNVAR_AVX2 inline __m256i widen_u8(__m128i bytes) { return _mm256_cvtepu8_epi32(bytes); }
ATTNVAR_AVX2 inline __m128i high8(__m128i bytes) { return _mm_srli_si128(bytes, 8); }
ATTNVAR_AVX2 inline __m256 to_float(__m256i v) { return _mm256_cvtepi32_ps(v); }
ATTNVAR_AVX2 inline __m128i load8(const uint8_t* p) {
  return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
}

// Elements 8k .. 8k + 7 of a 32-element nibble array of 16 bytes (element j < 16 is the
// low nibble of byte j, element j + 16 its high nibble) as int32.
ATTNVAR_AVX2 inline __m256i nibbles8(const uint8_t* qs, int k) {
  const __m256i v = widen_u8(load8(qs + 8 * (k & 1)));
  return k < 2 ? _mm256_and_si256(v, _mm256_set1_epi32(0x0F)) : _mm256_srli_epi32(v, 4);
}
// Bits e .. e + 7 of qh as eight int32 0/1, shifted to bit 4 (the fifth bit of Q5 values).
ATTNVAR_AVX2 inline __m256i fifth_bits(uint32_t qh, int e) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i bits = _mm256_and_si256(
      _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(qh >> e)), lanes),
      _mm256_set1_epi32(1));
  return _mm256_slli_epi32(bits, 4);
}

// The 32-element block types (Q4_0 .. Q8_0): `at(b)` reads a block's scales once, then
// chunk(k) gives its elements 8k .. 8k + 7 as eight floats, so a kernel can decode a block
// whole (four registers) or eight columns at a time (one).
struct Q4_0 {
  static constexpr int64_t kBytes = 18;
  const uint8_t* b;
  __m256 d;
  ATTNVAR_AVX2 static Q4_0 at(const uint8_t* b) { return {b, half8(b)}; }
  ATTNVAR_AVX2 __m256 chunk(int k) const {
    const __m256i q = _mm256_sub_epi32(nibbles8(b + 2, k), _mm256_set1_epi32(8));
    return _mm256_mul_ps(d, to_float(q));
  }
};

struct Q4_1 {
  static constexpr int64_t kBytes = 20;
  const uint8_t* b;
  __m256 d, m;
  ATTNVAR_AVX2 static Q4_1 at(const uint8_t* b) {
    Q4_1 t{b, {}, {}};
    half8x2(b, &t.d, &t.m);
    return t;
  }
  ATTNVAR_AVX2 __m256 chunk(int k) const {
    return _mm256_add_ps(_mm256_mul_ps(d, to_float(nibbles8(b + 4, k))), m);
  }
};

// The low and high 256 bits of a 512-bit register (the all-ones mask forms: GCC 12 warns of
// the unmasked extract's undefined pass-through operand, and so of the 512-to-256 cast's).
ATTNVAR_FUSED_AVX512 inline __m256 half_of(__m512 z, int h) {
  const __m512d d = _mm512_castps_pd(z);
  return _mm256_castpd_ps(h == 0 ? _mm512_maskz_extractf64x4_pd(0xFF, d, 0)
                                 : _mm512_maskz_extractf64x4_pd(0xFF, d, 1));
}
// Eight floats in both halves of a 512-bit register (128-bit lanes 0, 1, 0, 1; the all-ones
// mask form, whose pass-through is zero, for the same reason).
ATTNVAR_FUSED_AVX512 inline __m512 twice(__m256 v) {
  const __m512 z = _mm512_castps256_ps512(v);
  return _mm512_maskz_shuffle_f32x4(0xFFFF, z, z, 0x44);
}

// Q4_1 for the AVX-512VL tiles, by table: a block's sixteen possible values d·q + m
// (q = 0 .. 15) computed once, with Q4_1::chunk's multiply and add, and each element then
// picked from them by its nibble. A permute reads only the low four bits of an index, so a
// low nibble needs no mask. The same floats as Q4_1::chunk with fewer instructions per
// chunk: a permute against a convert, a multiply and an add.
// The 256-bit one keeps the table in two ymm registers (one two-table permute per chunk),
// so a 256-bit tile stays free of 512-bit instructions.
struct Q4_1Table256 {
  static constexpr int64_t kBytes = Q4_1::kBytes;
  const uint8_t* qs;
  __m256 low, high;  // the values for q = 0 .. 7 and 8 .. 15
  ATTNVAR_FUSED_AVX512 static Q4_1Table256 at(const uint8_t* b) {
    __m256 d, m;
    half8x2(b, &d, &m);
    const __m256 q0 = _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 q1 = _mm256_setr_ps(8, 9, 10, 11, 12, 13, 14, 15);
    return {b + 4, _mm256_add_ps(_mm256_mul_ps(d, q0), m),
            _mm256_add_ps(_mm256_mul_ps(d, q1), m)};
  }
  ATTNVAR_FUSED_AVX512 __m256 chunk(int k) const {
    const __m256i v = widen_u8(load8(qs + 8 * (k & 1)));
    return _mm256_permutex2var_ps(low, k < 2 ? v : _mm256_srli_epi32(v, 4), high);
  }
};

// The 512-bit one: chunk2(k) gives chunk k in both halves of a 512-bit register, as the
// 512-bit tiles use it (its low half is chunk(k)).
struct Q4_1Table512 {
  static constexpr int64_t kBytes = Q4_1::kBytes;
  const uint8_t* qs;
  __m512 table;
  ATTNVAR_FUSED_AVX512 static Q4_1Table512 at(const uint8_t* b) {
    int32_t dm;
    std::memcpy(&dm, b, 4);
    // (The all-ones mask forms here and below: see half_of.)
    const __m512 both = _mm512_maskz_cvtph_ps(0xFFFF, _mm256_set1_epi32(dm));  // d, m, d, m..
    const __m512 d = _mm512_maskz_permute_ps(0xFFFF, both, 0x00);
    const __m512 m = _mm512_maskz_permute_ps(0xFFFF, both, 0x55);
    const __m512 q = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return {b + 4, _mm512_add_ps(_mm512_mul_ps(d, q), m)};
  }
  ATTNVAR_FUSED_AVX512 __m512 chunk2(int k) const {
    int64_t bytes;
    std::memcpy(&bytes, qs + 8 * (k & 1), 8);
    const __m512i v = _mm512_maskz_cvtepu8_epi32(0xFFFF, _mm_set1_epi64x(bytes));  // twice
    return _mm512_maskz_permutexvar_ps(0xFFFF, k < 2 ? v : _mm512_maskz_srli_epi32(0xFFFF, v, 4),
                                       table);
  }
  ATTNVAR_FUSED_AVX512 __m256 chunk(int k) const { return half_of(chunk2(k), 0); }
};

// The decoders a type's AVX-512VL tiles use: its own, or a faster one giving the same floats
// (Narrow for 256-bit tiles, Wide, with chunk2, for 512-bit ones).
template <class T>
struct Avx512Decoders {
  using Narrow = T;
  using Wide = T;
};
template <>
struct Avx512Decoders<Q4_1> {
  using Narrow = Q4_1Table256;
  using Wide = Q4_1Table512;
};

struct Q5_0 {
  static constexpr int64_t kBytes = 22;
  const uint8_t* b;
  __m256 d;
  uint32_t qh;
  ATTNVAR_AVX2 static Q5_0 at(const uint8_t* b) {
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    return {b, half8(b), qh};
  }
  ATTNVAR_AVX2 __m256 chunk(int k) const {
    const __m256i q = _mm256_or_si256(nibbles8(b + 6, k), fifth_bits(qh, 8 * k));
    return _mm256_mul_ps(d, to_float(_mm256_sub_epi32(q, _mm256_set1_epi32(16))));
  }
};

struct Q5_1 {
  static constexpr int64_t kBytes = 24;
  const uint8_t* b;
  __m256 d, m;
  uint32_t qh;
  ATTNVAR_AVX2 static Q5_1 at(const uint8_t* b) {
    uint32_t qh;
    std::memcpy(&qh, b + 4, 4);
    Q5_1 t{b, {}, {}, qh};
    half8x2(b, &t.d, &t.m);
    return t;
  }
  ATTNVAR_AVX2 __m256 chunk(int k) const {
    const __m256i q = _mm256_or_si256(nibbles8(b + 8, k), fifth_bits(qh, 8 * k));
    return _mm256_add_ps(_mm256_mul_ps(d, to_float(q)), m);
  }
};

struct Q8_0 {
  static constexpr int64_t kBytes = 34;
  const uint8_t* b;
  __m256 d;
  ATTNVAR_AVX2 static Q8_0 at(const uint8_t* b) { return {b, half8(b)}; }
  ATTNVAR_AVX2 __m256 chunk(int k) const {
    return _mm256_mul_ps(d, to_float(_mm256_cvtepi8_epi32(load8(b + 2 + 8 * k))));
  }
};

template <class T>
ATTNVAR_AVX2 void block_32(const uint8_t* b, float* y) {
  const T t = T::at(b);
  for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + 8 * k, t.chunk(k));
}

// A block through the decoder of the AVX-512VL 256-bit tiles (detail::decode_blocks_avx512).
template <class T>
ATTNVAR_FUSED_AVX512 void decode_narrow(const uint8_t* b, float* y) {
  const T t = T::at(b);
  for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + 8 * k, t.chunk(k));
}

// A block through the decoder of the 512-bit tiles (detail::decode_blocks_avx512): each
// chunk as those tiles get it, in both halves of a register (a type without chunk2 gets its
// chunk copied, as the tiles copy it); a high half that differs from the low one is stored
// as a NaN no decoder makes (sign set, payload 0x7FF).
template <class T>
ATTNVAR_FUSED_AVX512 void decode_wide(const uint8_t* b, float* y) {
  const T t = T::at(b);
  for (int k = 0; k < 4; ++k) {
    __m512 z;
    if constexpr (requires { t.chunk2(k); }) {
      z = t.chunk2(k);
    } else {
      z = twice(t.chunk(k));
    }
    const __m256 low = half_of(z, 0), high = half_of(z, 1);
    const __m256i same = _mm256_cmpeq_epi32(_mm256_castps_si256(low), _mm256_castps_si256(high));
    const __m256 marker = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0xFFC007FFu)));
    _mm256_storeu_ps(y + 8 * k, _mm256_blendv_ps(marker, low, _mm256_castsi256_ps(same)));
  }
}

// At block b of a tile over O weight rows from w: the next tile's weight rows (the O rows
// after these, contiguous), a block's share per block. The hardware prefetcher does not
// follow O interleaved rows of a few hundred bytes (1 row 18.8 -> 9.1 ms per pass over the
// model, 8 rows 32.7 -> 26.9, 16 rows 58.3 -> 52.9; bench/microbench_qgemv_rows, 1 thread,
// 2026-12-07). A prefetch never faults, even past the matrix.
template <class T, int O>
ATTNVAR_INLINE void prefetch_next_tile(const uint8_t* w, int64_t row_bytes, int64_t b) {
  const auto* next = reinterpret_cast<const char*>(w + O * row_bytes + b * O * T::kBytes);
#pragma GCC unroll 8
  for (int64_t i = 0; i < O * T::kBytes; i += 64) _mm_prefetch(next + i, _MM_HINT_T0);
}

// R rows of x against O weight rows of a 32-element block type, each block decoded in
// registers once for all R rows: per accumulator the same multiply-adds in the same order
// as gemv_rows' tiles on the decoded weights (eight columns at a time, ascending), then the
// same horizontal sums; so the outputs equal gemv_rows' bit for bit, whatever R and O.
// x comes packed (pack_rows): chunk c of row r at x[8 (c R + r)], so every load is one
// base register plus a constant, and the tile reads x front to back.
// ByChunk: per eight columns, decode them for the O weight rows, then load each row of x
// once for O multiply-adds (R·O + O + 1 registers and the scales); else a whole block of
// one weight row at a time (4 registers), x loaded per weight row.
template <class T, int R, int O, bool ByChunk>
ATTNVAR_INLINE ATTNVAR_FUSED_AVX2 void fused_tile_body(const float* x, const uint8_t* w,
                                                         int64_t row_bytes, int64_t blocks,
                                                         const float* bias, float* y,
                                                         int64_t ldy) {
  __m256 acc[O * R];
#pragma GCC unroll 32
  for (int j = 0; j < O * R; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + 32 * R * b;
    const uint8_t* wb = w + b * T::kBytes;
    prefetch_next_tile<T, O>(w, row_bytes, b);
    if constexpr (ByChunk) {
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        // T::at per chunk: the compiler converts the scales once per block all the same (an
        // array of T, filled once per block, was kept in memory).
        __m256 wv[O];
#pragma GCC unroll 32
        for (int o = 0; o < O; ++o) wv[o] = T::at(wb + o * row_bytes).chunk(k);
#pragma GCC unroll 32
        for (int r = 0; r < R; ++r) {
          // In a register for the O multiply-adds (GCC would fold the load into each of them:
          // 8 rows × 2, 1536 columns, 32 -> 43 GMAC/s).
          __m256 xv = _mm256_loadu_ps(xb + 8 * (k * R + r));
          asm("" : "+v"(xv));
#pragma GCC unroll 32
          for (int o = 0; o < O; ++o) acc[o * R + r] = _mm256_fmadd_ps(wv[o], xv, acc[o * R + r]);
        }
        // The weights stay live to here, so no multiply-add writes its result over them and
        // the accumulators keep their registers (else GCC 12 adds a register move per
        // multiply-add or two).
#pragma GCC unroll 32
        for (int o = 0; o < O; ++o) asm("" : : "v"(wv[o]));
      }
    } else {
#pragma GCC unroll 32
      for (int o = 0; o < O; ++o) {
        const T t = T::at(wb + o * row_bytes);
        __m256 wv[4];
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) wv[k] = t.chunk(k);
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
#pragma GCC unroll 32
          for (int r = 0; r < R; ++r) {
            const __m256 xv = _mm256_loadu_ps(xb + 8 * (k * R + r));
            acc[o * R + r] = _mm256_fmadd_ps(wv[k], xv, acc[o * R + r]);
          }
        }
      }
    }
  }
  detail::store_tile<R, O>(acc, bias, y, ldy);  // gemv_rows' sums (gemv_tile_avx2.h)
}

// The by-chunk tile with 512-bit registers: rows r and r + 1 of x side by side in one
// register (the packing puts a chunk's rows next to each other), each decoded weight chunk
// copied into both halves, so one 512-bit multiply-add does the two rows' 256-bit ones.
// Every lane gets the same multiply-adds in the same order as in fused_tile_body, and the
// accumulators split back into the 256-bit ones that store_tile sums: the outputs are bit
// for bit the same. Half the multiply-add instructions, which counts on cores with two
// 512-bit FMA units (Xeon); an odd last row keeps a 256-bit accumulator. From 6 rows: with
// 2 or 4 the copy of each chunk into both halves cost more than it saved (2 rows 14.0 ->
// 18.8 ms a pass over the bundled model's projections).
constexpr int kMin512Rows = 6;
template <class T, int R, int O>
ATTNVAR_INLINE ATTNVAR_FUSED_AVX512 void fused_tile_body_512(const float* x, const uint8_t* w,
                                                             int64_t row_bytes, int64_t blocks,
                                                             const float* bias, float* y,
                                                             int64_t ldy) {
  constexpr int P = R / 2;  // pairs of rows
  constexpr bool kOdd = R % 2 == 1;
  __m512 acc2[O * P];
  __m256 acc1[O];
#pragma GCC unroll 32
  for (int j = 0; j < O * P; ++j) acc2[j] = _mm512_setzero_ps();
#pragma GCC unroll 32
  for (int o = 0; o < O; ++o) acc1[o] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + 32 * R * b;
    const uint8_t* wb = w + b * T::kBytes;
    prefetch_next_tile<T, O>(w, row_bytes, b);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      __m256 wv[O];
      __m512 wz[O];
#pragma GCC unroll 32
      for (int o = 0; o < O; ++o) {
        if constexpr (requires(const T& t) { t.chunk2(k); }) {
          wz[o] = T::at(wb + o * row_bytes).chunk2(k);
          wv[o] = half_of(wz[o], 0);
        } else {
          wv[o] = T::at(wb + o * row_bytes).chunk(k);
          wz[o] = twice(wv[o]);
        }
      }
#pragma GCC unroll 32
      for (int p = 0; p < P; ++p) {
        __m512 xv = _mm512_loadu_ps(xb + 8 * (k * R + 2 * p));
        asm("" : "+v"(xv));
#pragma GCC unroll 32
        for (int o = 0; o < O; ++o) acc2[o * P + p] = _mm512_fmadd_ps(wz[o], xv, acc2[o * P + p]);
      }
      if constexpr (kOdd) {
        __m256 xv = _mm256_loadu_ps(xb + 8 * (k * R + R - 1));
        asm("" : "+v"(xv));
#pragma GCC unroll 32
        for (int o = 0; o < O; ++o) acc1[o] = _mm256_fmadd_ps(wv[o], xv, acc1[o]);
      }
#pragma GCC unroll 32
      for (int o = 0; o < O; ++o) asm("" : : "v"(wz[o]), "v"(wv[o]));
    }
  }
  __m256 acc[O * R];
#pragma GCC unroll 32
  for (int o = 0; o < O; ++o) {
#pragma GCC unroll 32
    for (int p = 0; p < P; ++p) {
      acc[o * R + 2 * p] = half_of(acc2[o * P + p], 0);
      acc[o * R + 2 * p + 1] = half_of(acc2[o * P + p], 1);
    }
    if constexpr (kOdd) acc[o * R + R - 1] = acc1[o];
  }
  detail::store_tile<R, O>(acc, bias, y, ldy);
}

// The tile compiled for each instruction set (same body, same operations; AVX-512VL only
// adds registers).
struct Avx2 {};
struct Avx512 {};

template <class T, int R, int O, bool ByChunk>
ATTNVAR_FUSED_AVX2 void fused_tile(Avx2, const float* x, const uint8_t* w, int64_t row_bytes,
                                   int64_t blocks, const float* bias, float* y, int64_t ldy) {
  fused_tile_body<T, R, O, ByChunk>(x, w, row_bytes, blocks, bias, y, ldy);
}
template <class T, int R, int O, bool ByChunk>
ATTNVAR_FUSED_AVX512 void fused_tile(Avx512, const float* x, const uint8_t* w,
                                     int64_t row_bytes, int64_t blocks, const float* bias,
                                     float* y, int64_t ldy) {
  if constexpr (ByChunk && R >= kMin512Rows) {
    fused_tile_body_512<typename Avx512Decoders<T>::Wide, R, O>(x, w, row_bytes, blocks, bias,
                                                               y, ldy);
  } else {
    // One row keeps the type's own decoder: its tiles decode a whole block per weight row
    // for one multiply-add per chunk, where the table cost more than it saved (1 row 12.2 ->
    // 13.2 ms a pass, 2 rows 14.7 -> 14.0, 4 rows 20.4 -> 18.9).
    using D = std::conditional_t<(R > 1), typename Avx512Decoders<T>::Narrow, T>;
    fused_tile_body<D, R, O, ByChunk>(x, w, row_bytes, blocks, bias, y, ldy);
  }
}

// Register tiles: O weight rows per tile for R rows of x (a group).
// AVX2 (16 registers): R·O ≤ 8 accumulators, a block decoded whole per weight row.
constexpr int tile_outputs(Avx2, int r) { return r == 1 ? 8 : r == 2 ? 4 : r <= 4 ? 2 : 1; }
constexpr bool tile_by_chunk(Avx2, int, int) { return false; }
// AVX-512VL (32 registers): two weight rows per tile for 3-12 rows too, eight columns
// decoded at a time and each row of x loaded once for both: half the loads, which counts
// where x comes from L2 (8 rows of 1536 columns, 48 KB: 44 GMAC/s against 27 for 8 × 1;
// with 576 columns even, 42). Wider tiles measured no faster: 8 × 3 39 GMAC/s, 2 × 8 23-26
// against 27 for 2 × 4, 4 × 4 as 4 × 2. (Q4_1, the kernel alone on 256 weight rows,
// 1 thread, this Zen 4; 57 GMAC/s is its FMA peak.)
constexpr int tile_outputs(Avx512, int r) { return r == 1 ? 8 : r == 2 ? 4 : 2; }
constexpr bool tile_by_chunk(Avx512, int r, int o) { return r > 1 && o > 1; }

// Rows of x per group, the R of the tiles. AVX-512: up to 16 in one group, so a block is
// decoded once for all of them (256-bit tiles on Zen 4: 9-12 rows 43-44 GMAC/s, against
// 37-39 in two groups; with the 512-bit tiles on a Xeon, 16 rows in one group 47.0 ms a pass
// over the bundled model against 62.8 in two groups of 8, bench/microbench_qgemv_rows). AVX2: 8, as its tiles' registers allow, while a group's packed rows fit
// in L1: its tiles load x once per multiply-add, and from L2 (the down projection's 1536
// columns, 48 KB for 8 rows) 8-row groups ran at 28 GMAC/s, 4-row ones at 36.
constexpr int64_t max_group_rows(Avx2) { return 8; }
constexpr int64_t max_group_rows(Avx512) { return 16; }
int64_t group_rows(bool avx512, int64_t in) {
  return avx512 ? max_group_rows(Avx512{}) : in <= 768 ? max_group_rows(Avx2{}) : 4;
}

// Rows of x in groups of at most g, as even as they go (16 rows in 12: 8 + 8, not 12 + 4,
// whose 4-row tiles decode a block per four rows): f(first row, rows) per group.
template <class F>
void for_each_group(int64_t rows, int64_t g, F&& f) {
  const int64_t groups = (rows + g - 1) / g;
  for (int64_t i = 0; i < groups; ++i) {
    const int64_t r0 = i * rows / groups;
    f(r0, (i + 1) * rows / groups - r0);
  }
}

// Each group packed for the tiles: chunk c (columns 8c .. 8c + 7) of the group's row r at
// 8 (c·n + r) for a group of n rows, from r0 · in for the group from row r0. One row is its
// own packing.
void pack_rows(const float* x, int64_t ldx, int64_t rows, int64_t g, int64_t in, float* out) {
  for_each_group(rows, g, [&](int64_t r0, int64_t n) {
    float* dst = out + r0 * in;
    for (int64_t c = 0; c < in / 8; ++c) {
      for (int64_t r = 0; r < n; ++r) {
        std::memcpy(dst + 8 * (c * n + r), x + (r0 + r) * ldx + 8 * c, 8 * sizeof(float));
      }
    }
  });
}

// Weight rows [0, n) of a qgemv_rows tile against R rows: O-row tiles while they fit, then
// narrower ones.
template <class Isa, class T, int R, int O = tile_outputs(Isa{}, R)>
void fused_rows(const float* x, const uint8_t* w, int64_t row_bytes, int64_t blocks, int64_t n,
                const float* bias, float* y, int64_t ldy) {
  int64_t o = 0;
  for (; o + O <= n; o += O) {
    fused_tile<T, R, O, tile_by_chunk(Isa{}, R, O)>(Isa{}, x, w + o * row_bytes, row_bytes,
                                                     blocks, bias != nullptr ? bias + o : nullptr,
                                                     y + o, ldy);
  }
  if constexpr (O > 1) {
    if (o < n) {
      fused_rows<Isa, T, R, O - 1>(x, w + o * row_bytes, row_bytes, blocks, n - o,
                                   bias != nullptr ? bias + o : nullptr, y + o, ldy);
    }
  }
}

// One group of `rows` rows (packed by pack_rows) against weight rows [0, n).
template <class Isa, class T, int R = 1>
void fused_group(const float* x, int64_t rows, const uint8_t* w, int64_t row_bytes,
                 int64_t blocks, int64_t n, const float* bias, float* y, int64_t ldy) {
  if (rows == R) {
    fused_rows<Isa, T, R>(x, w, row_bytes, blocks, n, bias, y, ldy);
  } else if constexpr (R < max_group_rows(Isa{})) {
    fused_group<Isa, T, R + 1>(x, rows, w, row_bytes, blocks, n, bias, y, ldy);
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
using FusedFn = void (*)(const float*, int64_t, const uint8_t*, int64_t, int64_t, int64_t,
                         const float*, float*, int64_t);

// A type's x86 kernels: the decoder of one block into memory, and the fused decode-and-
// multiply, which the 32-element types have (the K types decode into the buffer instead:
// their chunks would re-read a super-block's scales, measured slower), for AVX2 and for
// AVX-512VL.
struct X86Kernels {
  BlockFn block = nullptr;
  FusedFn fused_avx2 = nullptr, fused_avx512 = nullptr;
};

template <class T>
constexpr X86Kernels kernels_32() {
  return {block_32<T>, fused_group<Avx2, T>, fused_group<Avx512, T>};
}

X86Kernels x86_kernels(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::Q4_0:
      return kernels_32<Q4_0>();
    case GgmlType::Q4_1:
      return kernels_32<Q4_1>();
    case GgmlType::Q5_0:
      return kernels_32<Q5_0>();
    case GgmlType::Q5_1:
      return kernels_32<Q5_1>();
    case GgmlType::Q8_0:
      return kernels_32<Q8_0>();
    case GgmlType::Q4_K:
      return {block_q4_k};
    case GgmlType::Q5_K:
      return {block_q5_k};
    case GgmlType::Q6_K:
      return {block_q6_k};
    default:
      return {};
  }
}

// The decoders need AVX2 and F16C (every AVX2 CPU we know of has both).
bool cpu_has_avx2_f16c() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return has;
}

// The fused kernels multiply with FMA, as gemv_rows' AVX2 kernel does: both need it.
bool cpu_has_avx2_fma() {
  static const bool has = cpu_has_avx2_f16c() && __builtin_cpu_supports("fma");
  return has;
}

bool cpu_has_avx512vl() {
  static const bool has = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
}

// Whether `kernel` gets the AVX-512VL tiles: kAuto on a CPU that has it.
bool use_avx512(GemvRowsKernel kernel) {
  return kernel == GemvRowsKernel::kAuto && cpu_has_avx512vl();
}

// The fused kernel `kernel` picks for a 32-element type (null: decode into the buffer).
FusedFn fused_kernel(uint32_t type, GemvRowsKernel kernel) {
  if (kernel == GemvRowsKernel::kPortable || !cpu_has_avx2_fma()) return nullptr;
  const X86Kernels k = x86_kernels(type);
  return use_avx512(kernel) ? k.fused_avx512 : k.fused_avx2;
}
#endif  // ATTNVAR_QUANT_X86

// One row of `cols` elements from its blocks.
void decode_row(uint32_t type, const uint8_t* src, int64_t cols, float* dst, bool avx2) {
#ifdef ATTNVAR_QUANT_X86
  if (avx2) {
    const BlockFn fn = x86_kernels(type).block;
    const int64_t block = ggml_block_size(type), bytes = ggml_type_size(type);
    for (int64_t i = 0; i < cols / block; ++i) fn(src + i * bytes, dst + i * block);
    return;
  }
#endif
  dequantize_row(type, src, cols, dst);
}

bool use_avx2(GemvRowsKernel kernel) {
#ifdef ATTNVAR_QUANT_X86
  return kernel != GemvRowsKernel::kPortable && cpu_has_avx2_f16c();
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
  // Each part's fused kernel, looked up once per call (null: decode into the buffer), and x
  // packed for them once, here, in groups of rows.
  std::vector<FusedFn> fused_of(parts.size(), nullptr);
  bool any_fused = false;
  for (size_t i = 0; i < parts.size(); ++i) {
    fused_of[i] = fused_kernel(parts[i].type, kernel);
    any_fused = any_fused || fused_of[i] != nullptr;
  }
  const int64_t group = group_rows(use_avx512(kernel), in);
  const float* packed = x;
  if (any_fused && rows > 1) {
    // 64-byte aligned: the tiles' 32-byte loads then never straddle two cache lines (at
    // malloc's 16-byte alignment half of them did: AVX2's 6-8-row tiles 25 % slower).
    thread_local std::vector<float> pack;
    pack.resize(static_cast<size_t>(rows * in + 16));
    float* aligned = pack.data() + (16 - reinterpret_cast<uintptr_t>(pack.data()) / 4 % 16) % 16;
    pack_rows(x, ldx, rows, group, in, aligned);
    packed = aligned;
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
        for_each_group(rows, group, [&](int64_t r0, int64_t g) {
          fn(packed + r0 * in, g, m.blocks.const_data_ptr<uint8_t>() + o * m.row_bytes(),
             m.row_bytes(), blocks, n, bias != nullptr ? bias + out_row : nullptr,
             y + r0 * ldy + out_row, ldy);
        });
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

const char* qgemv_rows_auto_kernel() {
#ifdef ATTNVAR_QUANT_X86
  if (cpu_has_avx512vl()) return "avx512vl";
  if (cpu_has_avx2_fma()) return "avx2+fma";
#endif
  return "portable";
}

std::string qgemv_rows_tiles(int64_t rows, int64_t in) {
#ifdef ATTNVAR_QUANT_X86
  const auto describe = [&](auto isa) {
    std::string s;
    const bool avx512 = std::is_same_v<decltype(isa), Avx512>;
    for_each_group(rows, group_rows(avx512, in), [&](int64_t, int64_t n) {
      s += fmt::format("{}{}x{}", s.empty() ? "" : " + ", n,
                       tile_outputs(isa, static_cast<int>(n)));
    });
    return s;
  };
  if (cpu_has_avx512vl()) return describe(Avx512{});
  if (cpu_has_avx2_fma()) return describe(Avx2{});
#endif
  return "portable";
}

namespace detail {

bool half_to_float_f16c(const uint16_t* h, int64_t n, float* vector_out, float* scalar_out) {
#ifdef ATTNVAR_QUANT_X86
  if (!cpu_has_avx2_f16c()) return false;
  for (int64_t i = 0; i < n; ++i) {
    half_f16c(reinterpret_cast<const uint8_t*>(h + i), vector_out + i, scalar_out + i);
  }
  return true;
#else
  (void)h, (void)n, (void)vector_out, (void)scalar_out;
  return false;
#endif
}

bool decode_blocks_avx512(uint32_t type, const uint8_t* blocks, int64_t n, bool wide,
                          float* out) {
#ifdef ATTNVAR_QUANT_X86
  if (!cpu_has_avx512vl()) return false;
  const auto run = [&](auto decoders) {
    using D = decltype(decoders);
    for (int64_t i = 0; i < n; ++i) {
      if (wide) {
        decode_wide<typename D::Wide>(blocks + i * D::Wide::kBytes, out + 32 * i);
      } else {
        decode_narrow<typename D::Narrow>(blocks + i * D::Narrow::kBytes, out + 32 * i);
      }
    }
    return true;
  };
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::Q4_0:
      return run(Avx512Decoders<Q4_0>{});
    case GgmlType::Q4_1:
      return run(Avx512Decoders<Q4_1>{});
    case GgmlType::Q5_0:
      return run(Avx512Decoders<Q5_0>{});
    case GgmlType::Q5_1:
      return run(Avx512Decoders<Q5_1>{});
    case GgmlType::Q8_0:
      return run(Avx512Decoders<Q8_0>{});
    default:
      return false;
  }
#else
  (void)type, (void)blocks, (void)n, (void)wide, (void)out;
  return false;
#endif
}

}  // namespace detail

}  // namespace attnvar

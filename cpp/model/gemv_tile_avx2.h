// The end of an AVX2 gemv tile, shared by gemv_rows' f32 tiles and the quantized
// projection's fused tiles (quantized_matrix.cpp): both must sum each accumulator in the
// same order for the quantized path to give the f32 path's outputs bit for bit, so that
// order is written once, here. Internal to the library (x86 only); torch-free.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <cstdint>

namespace attnvar::detail {

#define ATTNVAR_AVX2_FMA __attribute__((target("avx2,fma")))

// Horizontal sums of four accumulators, each ((a0+a1)+(a2+a3)) + ((a4+a5)+(a6+a7)): the
// same order for every accumulator, whichever four are grouped, so a row's result does not
// depend on how rows and outputs were blocked.
ATTNVAR_AVX2_FMA inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// A tile's R·O accumulators (acc[o·R + r]: output o of row r), each summed, plus bias[o]
// when given, stored at y[r·ldy + o].
template <int R, int O>
ATTNVAR_AVX2_FMA inline void store_tile(const __m256* acc, const float* bias, float* y,
                                        int64_t ldy) {
  constexpr int n = O * R, groups = (n + 3) / 4;
  alignas(16) float sums[groups * 4];
  const __m256 zero = _mm256_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    const int j = 4 * g;
    _mm_store_ps(sums + j, sum4(acc[j], j + 1 < n ? acc[j + 1] : zero,
                                j + 2 < n ? acc[j + 2] : zero, j + 3 < n ? acc[j + 3] : zero));
  }
  for (int o = 0; o < O; ++o) {
    for (int r = 0; r < R; ++r) {
      y[r * ldy + o] = bias != nullptr ? sums[o * R + r] + bias[o] : sums[o * R + r];
    }
  }
}

}  // namespace attnvar::detail

#endif

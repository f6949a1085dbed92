#include "attnvar/model/gemv_rows.h"

#include <ATen/Parallel.h>

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "attnvar must be compiled with OpenMP (attnvar::openmp): at::parallel_for would run serially"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "model/gemv_tile_avx2.h"
#define ATTNVAR_GEMV_ROWS_X86 1
#endif

#include <algorithm>
#include <array>

namespace attnvar {
namespace {

// Outputs per parallel task at least: below ~64 KB of weights per task, waking a second
// thread costs more than it saves.
int64_t grain_outputs(int64_t in) {
  return std::max<int64_t>(16, (int64_t{1} << 14) / std::max<int64_t>(in, 1));
}

// ---- portable kernel ---------------------------------------------------------------------
// Eight partial sums per dot product (auto-vectorisable without reassociation), combined
// pairwise; each weight row is used for every row of x while it sits in L1.
void gemv_rows_portable(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t ldw,
                        int64_t o_begin, int64_t o_end, int64_t in, const float* bias, float* y,
                        int64_t ldy) {
  const int64_t main = in - in % 8;
  for (int64_t o = o_begin; o < o_end; ++o) {
    const float* wo = w + o * ldw;
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * ldx;
      std::array<float, 8> lane{};
      for (int64_t i = 0; i < main; i += 8) {
        for (int l = 0; l < 8; ++l) lane[l] += wo[i + l] * xr[i + l];
      }
      for (int64_t i = main; i < in; ++i) lane[i - main] += wo[i] * xr[i];
      float sum =
          ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
      if (bias != nullptr) sum += bias[o];
      y[r * ldy + o] = sum;
    }
  }
}

#ifdef ATTNVAR_GEMV_ROWS_X86
// ---- AVX2 + FMA kernel -------------------------------------------------------------------
#define ATTNVAR_AVX2 ATTNVAR_AVX2_FMA
using detail::store_tile;

// Mask of the first n (0..7) lanes, for the tail of a row.
ATTNVAR_AVX2 inline __m256i tail_mask(int64_t n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lanes);
}

// One tile: R rows of x times O consecutive weight rows. Per 8 columns: O weight loads,
// R x loads, R·O FMAs into R·O accumulators (R·O + O + 1 ≤ 16 ymm registers).
template <int R, int O>
ATTNVAR_AVX2 void tile_avx2(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t in,
                            const float* bias, float* y, int64_t ldy) {
  __m256 acc[O * R];
  for (int j = 0; j < O * R; ++j) acc[j] = _mm256_setzero_ps();
  const int64_t main = in - in % 8;
  for (int64_t i = 0; i < main; i += 8) {
    __m256 wv[O];
    for (int o = 0; o < O; ++o) wv[o] = _mm256_loadu_ps(w + o * ldw + i);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * ldx + i);
      for (int o = 0; o < O; ++o) acc[o * R + r] = _mm256_fmadd_ps(wv[o], xv, acc[o * R + r]);
    }
  }
  if (main < in) {
    const __m256i mask = tail_mask(in - main);
    __m256 wv[O];
    for (int o = 0; o < O; ++o) wv[o] = _mm256_maskload_ps(w + o * ldw + main, mask);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_maskload_ps(x + r * ldx + main, mask);
      for (int o = 0; o < O; ++o) acc[o * R + r] = _mm256_fmadd_ps(wv[o], xv, acc[o * R + r]);
    }
  }
  store_tile<R, O>(acc, bias, y, ldy);
}

// All rows against the one weight row at w: rows in blocks of eight or four, then the rest.
ATTNVAR_AVX2 void rows_avx2(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t ldw,
                            int64_t in, const float* bias, float* y, int64_t ldy) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8)
    tile_avx2<8, 1>(x + r * ldx, ldx, w, ldw, in, bias, y + r * ldy, ldy);
  for (; r + 4 <= rows; r += 4)
    tile_avx2<4, 1>(x + r * ldx, ldx, w, ldw, in, bias, y + r * ldy, ldy);
  switch (rows - r) {
    case 3:
      tile_avx2<3, 1>(x + r * ldx, ldx, w, ldw, in, bias, y + r * ldy, ldy);
      break;
    case 2:
      tile_avx2<2, 1>(x + r * ldx, ldx, w, ldw, in, bias, y + r * ldy, ldy);
      break;
    case 1:
      tile_avx2<1, 1>(x + r * ldx, ldx, w, ldw, in, bias, y + r * ldy, ldy);
      break;
    default:
      break;
  }
}

ATTNVAR_AVX2 void gemv_rows_avx2(const float* x, int64_t ldx, int64_t rows, const float* w,
                                 int64_t ldw, int64_t o_begin, int64_t o_end, int64_t in,
                                 const float* bias, float* y, int64_t ldy) {
  int64_t o = o_begin;
  const auto b = [&](int64_t at) { return bias != nullptr ? bias + at : nullptr; };
  if (rows == 1 || rows >= 6) {
    // 1 row: eight weight rows per tile (eight accumulators, two horizontal-sum groups), then
    // four: eight concurrent weight streams measured 15-19 % faster than four.
    // 6-16 rows: the same one-row tiles over the block of eight (then four) weight rows,
    // every row of x in turn while the block sits in L1, so the block is read from memory
    // once. Here the projections are bound by arithmetic, not memory, and these tiles beat
    // both the all-rows-per-weight-row tiles below and 4 × 3 tiles
    // (bench/microbench_gemv_rows, the model's 538 MB, 2 threads, 2026-12-06: 8 rows 24.4 ->
    // 18.4 ms, 12 rows 30.0 -> 23.0, 16 rows 34.4 -> 27.7; 6 rows even, 5 rows slower).
    for (; o + 8 <= o_end; o += 8) {
      for (int64_t r = 0; r < rows; ++r)
        tile_avx2<1, 8>(x + r * ldx, ldx, w + o * ldw, ldw, in, b(o), y + r * ldy + o, ldy);
    }
    for (; o + 4 <= o_end; o += 4) {
      for (int64_t r = 0; r < rows; ++r)
        tile_avx2<1, 4>(x + r * ldx, ldx, w + o * ldw, ldw, in, b(o), y + r * ldy + o, ldy);
    }
  }
  // 2..5 rows (and the last weight rows of any count): one weight row per tile, all rows
  // against it (up to 8 accumulators), which streams the weights fastest while they are
  // the bottleneck (4 rows: 43-44 ms instead of 62-63 for 4 × 3 tiles on the earlier
  // machine; 11.6-12.2 ms against 11.3 ms for one row here, 2 threads).
  for (; o < o_end; ++o) rows_avx2(x, ldx, rows, w + o * ldw, ldw, in, b(o), y + o, ldy);
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif  // ATTNVAR_GEMV_ROWS_X86

bool use_avx2(GemvRowsKernel kernel) {
#ifdef ATTNVAR_GEMV_ROWS_X86
  return kernel != GemvRowsKernel::kPortable && cpu_has_avx2_fma();
#else
  return false;
#endif
}

}  // namespace

void gemv_rows_range(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t ldw,
                     int64_t o_begin, int64_t o_end, int64_t in, const float* bias, float* y,
                     int64_t ldy, GemvRowsKernel kernel) {
  if (rows <= 0 || o_end <= o_begin) return;
#ifdef ATTNVAR_GEMV_ROWS_X86
  if (use_avx2(kernel)) {
    gemv_rows_avx2(x, ldx, rows, w, ldw, o_begin, o_end, in, bias, y, ldy);
    return;
  }
#endif
  gemv_rows_portable(x, ldx, rows, w, ldw, o_begin, o_end, in, bias, y, ldy);
}

void gemv_rows(const float* x, int64_t ldx, int64_t rows, const float* w, int64_t ldw, int64_t out,
               int64_t in, const float* bias, float* y, int64_t ldy, GemvRowsKernel kernel) {
  if (rows <= 0 || out <= 0) return;
  at::parallel_for(0, out, grain_outputs(in), [&](int64_t o_begin, int64_t o_end) {
    gemv_rows_range(x, ldx, rows, w, ldw, o_begin, o_end, in, bias, y, ldy, kernel);
  });
}

const char* gemv_rows_auto_kernel() {
  return use_avx2(GemvRowsKernel::kAuto) ? "avx2+fma" : "portable";
}

}  // namespace attnvar

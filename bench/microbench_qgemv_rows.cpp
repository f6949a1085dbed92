// The bundled model's quantized projections (SmolLM2-135M Q4_1: per layer q/k/v fused
// (960, 576), o (576, 576), gate/up fused (3072, 576), down (576, 1536), all Q4_1, × 30
// layers, and the Q8_0 output head (49152, 576); 96 MB of blocks) through qgemv_rows at
// M = 1..16 rows (batched generation stacks 8 sequences' 1-2 rows into 8-16-row calls), at
// 1 and 2 threads: min and median of 9 passes over all weights (and the least CPU time, for
// a shared machine), and the kernel and register tiles chosen.
// Random valid blocks (finite f16 scales), as the tests make them. Build against a
// configured build dir (bench/README.md); -fopenmp and torch's libgomp as in the library
// (cmake/TorchOpenMP.cmake), or at::parallel_for in libattnvar.a's callers runs every range
// on one thread:
//
//   B=build/dev; T=$(python -c 'import torch,os;print(os.path.dirname(torch.__file__))')
//   c++ -O3 -std=c++20 -fopenmp -D_GLIBCXX_USE_CXX11_ABI=1 -Icpp/include -isystem $T/include \
//     bench/microbench_qgemv_rows.cpp $B/cpp/libattnvar.a -L$T/lib -ltorch -ltorch_cpu -lc10 \
//     $T/lib/libgomp.so.1 -Wl,-rpath,$T/lib -lpcre2-8 -o $B/microbench_qgemv_rows
//   OMP_WAIT_POLICY=PASSIVE $B/microbench_qgemv_rows [threads ...]   (default: 1 2)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "attnvar/model/dequantize.h"
#include "attnvar/model/gguf.h"
#include "attnvar/model/quantized_matrix.h"

namespace {

using attnvar::GgmlType;
using attnvar::QuantizedMatrix;

struct Timing {
  double min_ms, median_ms, min_cpu_ms;
};

// CPU time of the whole process (all threads): on a shared machine the wall time includes
// the time other processes held the cores, the CPU time does not.
double cpu_ms() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return 1e3 * static_cast<double>(t.tv_sec) + 1e-6 * static_cast<double>(t.tv_nsec);
}

Timing time_passes(const std::function<void()>& pass) {
  pass();  // warm-up
  std::vector<double> ms, cpu;
  for (int i = 0; i < 9; ++i) {
    const double c0 = cpu_ms();
    const auto t0 = std::chrono::steady_clock::now();
    pass();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    cpu.push_back(cpu_ms() - c0);
  }
  std::sort(ms.begin(), ms.end());
  return {ms.front(), ms[ms.size() / 2], *std::min_element(cpu.begin(), cpu.end())};
}

// Random quants; every block's f16 scale (and Q4_1's min) finite, |value| ≤ 0.05.
QuantizedMatrix random_matrix(GgmlType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  const auto t = static_cast<uint32_t>(type);
  const int64_t block = attnvar::ggml_block_size(t), bytes = attnvar::ggml_type_size(t);
  auto blocks = at::empty({rows, static_cast<int64_t>(attnvar::ggml_nbytes(t, cols))}, at::kByte);
  uint8_t* p = blocks.data_ptr<uint8_t>();
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  for (int64_t i = 0; i < blocks.numel(); ++i) p[i] = static_cast<uint8_t>(byte(rng));
  const int halves = type == GgmlType::Q4_1 ? 2 : 1;  // d (and m) lead the block
  for (int64_t b = 0; b < rows * (cols / block); ++b) {
    for (int h = 0; h < halves; ++h) {
      const uint16_t bits = at::Half(scale(rng)).x;
      std::memcpy(p + b * bytes + 2 * h, &bits, 2);
    }
  }
  return {blocks, t, cols};
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> thread_counts;
  for (int i = 1; i < argc; ++i) thread_counts.push_back(std::atoi(argv[i]));
  if (thread_counts.empty()) thread_counts = {1, 2};
  c10::InferenceMode guard;
  std::mt19937 rng(11);
  // One projection: its parts (stacked rows, one qgemv_rows call), as the model fuses them.
  std::vector<std::vector<QuantizedMatrix>> weights;
  const auto q4_1 = [&](int64_t rows, int64_t cols) {
    return random_matrix(GgmlType::Q4_1, rows, cols, rng);
  };
  for (int l = 0; l < 30; ++l) {
    weights.push_back({q4_1(576, 576), q4_1(192, 576), q4_1(192, 576)});  // q, k, v
    weights.push_back({q4_1(576, 576)});                                  // o
    weights.push_back({q4_1(1536, 576), q4_1(1536, 576)});                // gate, up
    weights.push_back({q4_1(576, 1536)});                                 // down
  }
  weights.push_back({random_matrix(GgmlType::Q8_0, 49152, 576, rng)});  // output head
  double bytes = 0;
  int64_t max_out = 0;
  for (const auto& parts : weights) {
    int64_t out = 0;
    for (const auto& m : parts) {
      bytes += static_cast<double>(m.blocks.numel());
      out += m.rows();
    }
    max_out = std::max(max_out, out);
  }
  std::printf("%zu projections, %.0f MB of blocks; qgemv_rows kernel %s; OMP_WAIT_POLICY=%s\n",
              weights.size(), bytes / 1e6, attnvar::qgemv_rows_auto_kernel(),
              std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "(unset)");
  std::printf("ms per pass over all weights: min / median wall, min CPU (all threads)\n");
  for (const int threads : thread_counts) {
    at::set_num_threads(threads);
    for (int64_t m : {1, 2, 4, 8, 12, 16}) {
      const auto x576 = at::randn({m, 576}), x1536 = at::randn({m, 1536});
      auto y = at::empty({m, max_out});
      const Timing t = time_passes([&] {
        for (const auto& parts : weights) {
          const auto& x = parts.front().cols == 576 ? x576 : x1536;
          attnvar::qgemv_rows(x.data_ptr<float>(), x.size(1), m, parts, nullptr,
                              y.data_ptr<float>(), max_out);
        }
      });
      // The tiles for 576 columns, and for the down projection's 1536 where they differ.
      std::string tiles = attnvar::qgemv_rows_tiles(m, 576);
      if (const std::string down = attnvar::qgemv_rows_tiles(m, 1536); down != tiles) {
        tiles += "; down " + down;
      }
      std::printf("threads %d  M=%2lld  %7.2f / %7.2f ms  cpu %7.2f  (%s)\n",
                  at::get_num_threads(), static_cast<long long>(m), t.min_ms, t.median_ms,
                  t.min_cpu_ms, tiles.c_str());
    }
  }
  return 0;
}

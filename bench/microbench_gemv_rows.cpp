// The model's projections (SmolLM2-135M with q/k/v and gate/up fused: 121 weights, 538 MB
// of f32 with lm_head) at M = 1..16 rows: attnvar::project (gemv_rows) beside at::linear
// and the weight-major at::mm(w, xᵀ). Min and median of 7 passes over all weights, GB/s of
// weight streamed. Build against a configured build dir (bench/README.md); -fopenmp and
// torch's libgomp as in the library (cmake/TorchOpenMP.cmake), or at::parallel_for in this
// file and in libattnvar.a's callers runs every range on one thread:
//
//   B=build/dev; T=$(python -c 'import torch,os;print(os.path.dirname(torch.__file__))')
//   c++ -O3 -std=c++20 -fopenmp -D_GLIBCXX_USE_CXX11_ABI=1 -Icpp/include -isystem $T/include \
//     bench/microbench_gemv_rows.cpp $B/cpp/libattnvar.a -L$T/lib -ltorch -ltorch_cpu -lc10 \
//     $T/lib/libgomp.so.1 -Wl,-rpath,$T/lib -lpcre2-8 -o $B/microbench_gemv_rows
//   OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=2 $B/microbench_gemv_rows [threads]
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "attnvar/model/gemv_rows.h"
#include "attnvar/model/projection.h"

namespace {

struct Timing {
  double min_ms, median_ms;
};

Timing time_passes(const std::function<void()>& pass) {
  pass();  // warm-up
  std::vector<double> ms;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    pass();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms.front(), ms[ms.size() / 2]};
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  at::set_num_threads(threads);
  c10::InferenceMode guard;
  std::printf("threads %d, gemv_rows kernel %s, OMP_WAIT_POLICY=%s\n", at::get_num_threads(),
              attnvar::gemv_rows_auto_kernel(),
              std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "(unset)");
  // Per layer: qkv (960, 576), o (576, 576), gate_up (3072, 576), down (576, 1536).
  const std::vector<std::pair<int64_t, int64_t>> layer = {
      {960, 576}, {576, 576}, {3072, 576}, {576, 1536}};
  std::vector<at::Tensor> weights;
  for (int l = 0; l < 30; ++l) {
    for (auto [o, i] : layer) weights.push_back(at::randn({o, i}));
  }
  weights.push_back(at::randn({49152, 576}));
  double bytes = 0;
  for (const auto& w : weights) bytes += 4.0 * w.numel();
  std::printf("%zu weights, %.0f MB of f32; min / median ms per pass over all, GB/s at min\n",
              weights.size(), bytes / 1e6);
  for (int64_t m : {1, 2, 3, 4, 8, 12, 16}) {
    const auto x576 = at::randn({m, 576}), x1536 = at::randn({m, 1536});
    const auto input = [&](const at::Tensor& w) { return w.size(1) == 576 ? x576 : x1536; };
    const Timing g = time_passes([&] {
      for (const auto& w : weights) attnvar::project(input(w), w);
    });
    const Timing l = time_passes([&] {
      for (const auto& w : weights) at::linear(input(w), w);
    });
    const Timing t = time_passes([&] {
      for (const auto& w : weights) at::mm(w, input(w).t());
    });
    std::printf(
        "M=%2lld  gemv_rows %6.1f / %6.1f (%4.1f GB/s)   linear %6.1f / %6.1f   "
        "mm(W, X^T) %6.1f / %6.1f\n",
        static_cast<long long>(m), g.min_ms, g.median_ms, bytes / g.min_ms / 1e6, l.min_ms,
        l.median_ms, t.min_ms, t.median_ms);
  }
  return 0;
}

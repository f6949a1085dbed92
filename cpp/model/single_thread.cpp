#include "attnvar/model/single_thread.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>

#if AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "attnvar must be compiled with OpenMP (attnvar::openmp): at::parallel_for would run serially"
#endif

// The OpenMP and MKL runtimes are the ones torch itself loads (libgomp, MKL linked into
// libtorch_cpu). The calls are weak references resolved at load time, null where torch
// has no such runtime (attnvar links torch's libgomp only where torch uses OpenMP). MKL's C entry point is
// MKL_Set_Num_Threads_Local (the lower-case name is its Fortran one, taking a pointer).
extern "C" {
int omp_get_max_threads() __attribute__((weak));
void omp_set_num_threads(int) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace attnvar {

bool SingleThreadScope::available() {
  return omp_get_max_threads != nullptr && omp_set_num_threads != nullptr;
}

SingleThreadScope::SingleThreadScope(bool active) {
  if (!active) return;
  // ATen sets this thread's counts on its first parallel call; do it now so that a first
  // call inside the scope cannot undo the scope.
  at::internal::lazy_init_num_threads();
  if (available()) {
    omp_threads_ = omp_get_max_threads();
    omp_set_num_threads(1);
  }
  if (MKL_Set_Num_Threads_Local != nullptr) mkl_threads_ = MKL_Set_Num_Threads_Local(1);
}

SingleThreadScope::~SingleThreadScope() {
  if (omp_threads_ > 0) omp_set_num_threads(omp_threads_);
  if (mkl_threads_ >= 0) MKL_Set_Num_Threads_Local(mkl_threads_);
}

int parallel_for_threads() {
  const int64_t tasks = at::get_num_threads();
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    seen.fetch_or(uint64_t{1} << (at::get_thread_num() % 64));
  });
  return __builtin_popcountll(seen.load());
}

}  // namespace attnvar

// Runs the small tensor ops of a pass on the calling thread alone.
//
// A pass calls a few hundred ATen ops whose work is microseconds (RoPE, the attention of a
// few queries over the cache, the softmax of an (H, T, S) block, the set's bookkeeping over
// the vocabulary), and each one above ATen's or MKL's size threshold wakes the other
// intra-op threads. With OMP_WAIT_POLICY=PASSIVE on a busy machine one wake-up costs about
// as much as a whole small op: measured at load ≈ 2 on 2 cores, a (3, 6, 64)·(3, 64, 74)
// bmm takes ~100 µs on 2 threads and ~10 µs on one, a (9, 2, 74) softmax ~97 vs ~6 µs.
// The weight-streaming projections (gemv_rows) do need the threads and run outside.
#pragma once

namespace attnvar {

// While alive, ATen's parallel_for and MKL run single-threaded on this thread: OpenMP's
// thread count (omp_set_num_threads, per thread) and MKL's thread-local count are set to
// 1; the previous values come back on destruction, also on exceptions. Other threads are
// unaffected. Where torch was built without OpenMP or MKL, that part does nothing.
//
// Use it only around ops whose results do not depend on the thread count: elementwise
// ops, softmax along the last dimension, MKL matrix products (split by rows and columns,
// never along the sum), reductions that keep a dimension. Not around a reduction to one
// value (ATen splits a long 1-D sum between threads, so its rounding changes).
class SingleThreadScope {
 public:
  // active = false: the scope does nothing (for callers that decide by the size of the work).
  explicit SingleThreadScope(bool active = true);
  ~SingleThreadScope();
  SingleThreadScope(const SingleThreadScope&) = delete;
  SingleThreadScope& operator=(const SingleThreadScope&) = delete;

  // Whether the OpenMP runtime torch uses was found (else the scope changes nothing).
  static bool available();

 private:
  int omp_threads_ = 0;   // the previous OpenMP thread count; 0: untouched
  int mkl_threads_ = -1;  // the previous MKL thread-local count; -1: untouched
};

// How many threads at::parallel_for, compiled as attnvar's own code, spreads
// at::get_num_threads() one-item tasks over: that count where attnvar was built with
// torch's OpenMP runtime (cmake/TorchOpenMP.cmake), 1 inside a SingleThreadScope. A
// library built without OpenMP flags gets 1 everywhere: at::parallel_for is a header
// template that then runs every range on the calling thread (the projections ran on one
// thread this way until the build linked OpenMP).
int parallel_for_threads();

}  // namespace attnvar

// SingleThreadScope: ATen runs on one thread inside it, the previous count comes back after
// it (also when an exception leaves it), and results of thread-count-independent ops are
// unchanged.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <stdexcept>

#include "attnvar/model/single_thread.h"
#include "catch_compat.h"

using attnvar::SingleThreadScope;

TEST_CASE("SingleThreadScope runs ATen on one thread and restores the count", "[threads]") {
  at::set_num_threads(2);
  const int before = at::get_num_threads();
  {
    SingleThreadScope one_thread;
    if (SingleThreadScope::available()) {
      CHECK(at::get_num_threads() == 1);
      CHECK(attnvar::parallel_for_threads() == 1);
    }
  }
  CHECK(at::get_num_threads() == before);
  {
    SingleThreadScope inactive(false);
    CHECK(at::get_num_threads() == before);
  }
  try {
    SingleThreadScope one_thread;
    throw std::runtime_error("leaves the scope");
  } catch (const std::runtime_error&) {
  }
  CHECK(at::get_num_threads() == before);
}

TEST_CASE("attnvar's own at::parallel_for runs on the intra-op threads", "[threads]") {
  // Fails on a library compiled without torch's OpenMP flags, where at::parallel_for runs
  // every range on the calling thread.
  for (int n : {1, 2}) {
    at::set_num_threads(n);
    CHECK(attnvar::parallel_for_threads() == n);
  }
  at::set_num_threads(2);
}

TEST_CASE("SingleThreadScope leaves row-wise softmax and batched matmul unchanged", "[threads]") {
  at::set_num_threads(2);
  at::manual_seed(5);
  auto a = at::randn({3, 6, 64}), b = at::randn({3, 64, 200});
  auto scores = at::randn({9, 4, 300});
  auto bmm_all = at::bmm(a, b), softmax_all = at::softmax(scores, -1);
  SingleThreadScope one_thread;
  CHECK(at::equal(at::bmm(a, b), bmm_all));
  CHECK(at::equal(at::softmax(scores, -1), softmax_all));
}

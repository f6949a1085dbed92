// The compat preset's stale-mask leak: the mask a run leaves, and the rows later passes get.
#include <ATen/ATen.h>

#include <vector>

#include "attnvar/error.h"
#include "attnvar/generate/compat_tempo.h"
#include "attnvar/model/visibility.h"
#include "catch_compat.h"
#include "tiny_model.h"

using namespace attnvar;
using attnvar::testing::tiny_model;

namespace {

at::Tensor bools(std::vector<int64_t> values, int64_t rows, int64_t cols) {
  return at::tensor(values).view({rows, cols}).to(at::kBool);
}

TempoOptions clean(int64_t max_steps, bool bug) {
  TempoOptions o;
  o.threshold = 0.05;
  o.max_steps = max_steps;
  o.emulate_isolation_bug = bug;
  o.eos_ids = std::vector<int64_t>{};  // never stop early: the slot count is known
  return o;
}

}  // namespace

TEST_CASE("tempo_leak_mask: causal, holes between members of every recorded set",
          "[compat]") {
  // P = 2; S_0 = {7, 8} at printed 2..3, S_1 = {9, 10, 11} at 4..6, S_2 = {12} final and
  // unrecorded: S = 7.
  auto tree = Tree::build({1, 5}, {{7, 8}, {9, 10, 11}, {12}}, {});
  auto expected = bools({1, 0, 0, 0, 0, 0, 0,  //
                         1, 1, 0, 0, 0, 0, 0,  //
                         1, 1, 1, 0, 0, 0, 0,  //
                         1, 1, 0, 1, 0, 0, 0,  //
                         1, 1, 1, 1, 1, 0, 0,  //
                         1, 1, 1, 1, 0, 1, 0,  //
                         1, 1, 1, 1, 0, 0, 1},
                        7, 7);
  CHECK(at::equal(tempo_leak_mask(tree), expected));
  // The final set is never recorded, whatever its size: T = 1 is plain causal [P, P].
  auto one = Tree::build({1, 5, 6}, {{7, 8, 9}}, {});
  CHECK(at::equal(tempo_leak_mask(one), at::ones({3, 3}).tril().to(at::kBool)));
  auto none = Tree::build({1, 5, 6}, {}, {});
  CHECK(at::equal(tempo_leak_mask(none), at::ones({3, 3}).tril().to(at::kBool)));
  CHECK_THROWS_AS(tempo_leak_mask(Tree{}), ConfigError);
}

TEST_CASE("a kept mask gives every pass row clamp(c) over its keys, ANDed with its own",
          "[compat]") {
  auto m = tiny_model();
  auto leak = tempo_leak_mask(Tree::build({1, 5}, {{7, 8}, {9, 10, 11}, {12}}, {}));
  auto o = clean(6, false);
  o.leaked_masks = {leak};
  // P = 3: prefill rows get row 0 over keys 0..2; slot 3 (duplicate) .. slot 8 are fed
  // (six sets, the last never fed); from c = 7 on the row is the last one, 6, and key 7
  // and beyond are untouched.
  auto r = generate_tempo2025(m, {1, 20, 30}, o);
  REQUIRE(r.slots.size() == 9);
  auto expected = bools({1, 0, 0, 0, 0, 0, 0, 0, 0,  //
                         1, 0, 0, 0, 0, 0, 0, 0, 0,  //
                         1, 0, 0, 0, 0, 0, 0, 0, 0,  //
                         1, 1, 0, 1, 0, 0, 0, 0, 0,  //
                         1, 1, 1, 1, 1, 0, 0, 0, 0,  //
                         1, 1, 1, 1, 0, 1, 0, 0, 0,  //
                         1, 1, 1, 1, 0, 0, 1, 0, 0,  //
                         1, 1, 1, 1, 0, 0, 1, 1, 0,  //
                         1, 1, 1, 1, 0, 0, 1, 1, 1},
                        9, 9);
  CHECK(at::equal(r.visibility, expected));

  // A second kept mask, [4, 4] from a run with P = 1 and a recorded set at printed 1..3:
  // its rows 3.. hide keys 1 and 2. ANDed with the first, row by row.
  auto o2 = o;
  o2.leaked_masks = {leak, tempo_leak_mask(Tree::build({1}, {{5, 6, 7}, {8}}, {}))};
  auto r2 = generate_tempo2025(m, {1, 20, 30}, o2);
  CHECK(at::equal(r2.visibility, bools({1, 0, 0, 0, 0, 0, 0, 0, 0,  //
                                        1, 0, 0, 0, 0, 0, 0, 0, 0,  //
                                        1, 0, 0, 0, 0, 0, 0, 0, 0,  //
                                        1, 0, 0, 1, 0, 0, 0, 0, 0,  //
                                        1, 0, 0, 1, 1, 0, 0, 0, 0,  //
                                        1, 0, 0, 1, 0, 1, 0, 0, 0,  //
                                        1, 0, 0, 1, 0, 0, 1, 0, 0,  //
                                        1, 0, 0, 1, 0, 0, 1, 1, 0,  //
                                        1, 0, 0, 1, 0, 0, 1, 1, 1},
                                       9, 9)));
  // A causal [2, 2] mask (a run that stopped at its first set): its row 0 hides key 1 in
  // the prefill; from c = 1 on, its last row hides nothing.
  auto o3 = clean(2, false);
  o3.leaked_masks = {at::ones({2, 2}).tril().to(at::kBool)};
  auto r3 = generate_tempo2025(m, {1, 20, 30}, o3);
  CHECK(at::equal(r3.visibility, bools({1, 0, 0, 0, 0,  //
                                        1, 0, 0, 0, 0,  //
                                        1, 0, 1, 0, 0,  //
                                        1, 1, 1, 1, 0,  //
                                        1, 1, 1, 1, 1},
                                       5, 5)));
}

TEST_CASE("without kept masks the preset reports its own mask and is unchanged",
          "[compat]") {
  auto m = tiny_model();
  for (bool bug : {false, true}) {
    auto o = clean(5, bug);
    o.capture.enabled = true;
    auto r = generate_tempo2025(m, {1, 20, 30, 4}, o);
    const int64_t n = static_cast<int64_t>(r.slots.size());
    auto expected = at::ones({n, n}).tril().to(at::kBool);
    for (int64_t q = 4; q < n && bug; ++q) {
      expected[q].narrow(0, 0, q + 1).copy_(tempo_bug_visibility(r.tree, q)[0]);
    }
    CHECK(at::equal(r.visibility, expected));
    // A kept mask that hides nothing (causal, as large as the run) changes nothing.
    auto with = o;
    with.leaked_masks = {at::ones({1, 1}).to(at::kBool)};
    auto r1 = generate_tempo2025(m, {1, 20, 30, 4}, with);
    CHECK(at::equal(r1.visibility, r.visibility));
    REQUIRE(r1.passes.size() == r.passes.size());
    for (size_t p = 0; p < r.passes.size(); ++p) {
      for (size_t l = 0; l < r.passes[p].layers.size(); ++l) {
        CHECK(at::equal(r1.passes[p].layers[l].probabilities,
                        r.passes[p].layers[l].probabilities));
      }
    }
  }
}

TEST_CASE("kept masks must be non-empty square 2-D bool tensors", "[compat]") {
  auto m = tiny_model();
  auto o = clean(2, false);
  auto bools_opt = at::TensorOptions().dtype(at::kBool);
  for (const auto& bad : {at::ones({3}, bools_opt), at::ones({2, 3}, bools_opt),
                          at::ones({3, 3}), at::ones({0, 0}, bools_opt),
                          at::ones({2, 2, 2}, bools_opt)}) {
    o.leaked_masks = {bad};
    CHECK_THROWS_AS(generate_tempo2025(m, {1, 20, 30}, o), ConfigError);
  }
}

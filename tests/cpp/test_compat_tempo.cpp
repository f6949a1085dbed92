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

namespace {

bool same_tensor(const at::Tensor& a, const at::Tensor& b) {
  return a.defined() == b.defined() && (!a.defined() || at::equal(a, b));
}

// Everything a compat run records, compared exactly.
bool same_run(const GenerationResult& a, const GenerationResult& b) {
  if (a.tree.prompt != b.tree.prompt || a.tree.steps.size() != b.tree.steps.size() ||
      a.slots.size() != b.slots.size() || a.passes.size() != b.passes.size() ||
      a.stop_reason != b.stop_reason || !same_tensor(a.visibility, b.visibility)) {
    return false;
  }
  for (size_t t = 0; t < a.tree.steps.size(); ++t) {
    const auto &sa = a.tree.steps[t], &sb = b.tree.steps[t];
    if (sa.entropy != sb.entropy || sa.members.size() != sb.members.size()) return false;
    for (size_t k = 0; k < sa.members.size(); ++k) {
      const Member &ma = sa.members[k], &mb = sb.members[k];
      if (ma.token_id != mb.token_id || ma.probability != mb.probability ||
          ma.rank != mb.rank || ma.is_eos != mb.is_eos || ma.slot != mb.slot) {
        return false;
      }
    }
  }
  for (size_t i = 0; i < a.slots.size(); ++i) {
    const SlotRecord &x = a.slots[i], &y = b.slots[i];
    if (x.token_id != y.token_id || x.position != y.position || x.step != y.step ||
        x.member != y.member) {
      return false;
    }
  }
  for (size_t p = 0; p < a.passes.size(); ++p) {
    const PassCapture &x = a.passes[p], &y = b.passes[p];
    if (x.step != y.step || x.first_slot != y.first_slot || x.num_queries != y.num_queries ||
        x.layers.size() != y.layers.size() || x.hooks.size() != y.hooks.size()) {
      return false;
    }
    for (size_t l = 0; l < x.layers.size(); ++l) {
      if (x.layers[l].layer != y.layers[l].layer ||
          !same_tensor(x.layers[l].probabilities, y.layers[l].probabilities) ||
          !same_tensor(x.layers[l].scores, y.layers[l].scores) ||
          !same_tensor(x.layers[l].value_norms, y.layers[l].value_norms)) {
        return false;
      }
    }
    for (const auto& [name, t] : x.hooks) {
      auto it = y.hooks.find(name);
      if (it == y.hooks.end() || !same_tensor(t, it->second)) return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("a batch of compat runs gives each its solo run bit for bit", "[compat][batch]") {
  auto m = tiny_model();
  // Repeated prompts (their prefill shared), both modes, varied θ and steps (0 included),
  // EOS stops, ragged lengths.
  const std::vector<std::vector<int64_t>> distinct = {
      {1, 20, 30}, {1, 7}, {1, 20, 30, 4, 11}, {1, 21, 30}};
  // An EOS id that stops runs in mid-course: a token a free run selects at its step 3.
  const auto free_run = generate_tempo2025(m, distinct[0], clean(9, false));
  const int64_t stop_id = free_run.tree.steps.at(3).members.back().token_id;
  std::vector<std::vector<int64_t>> prompts;
  std::vector<TempoOptions> options;
  CaptureSpec capture;
  capture.enabled = true;
  capture.scores = true;
  capture.value_norms = true;
  capture.hook_points = {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_k"};
  for (int i = 0; i < 12; ++i) {
    prompts.push_back(distinct[i % 4]);
    TempoOptions o;
    o.threshold = std::vector<double>{0.02, 0.05, 0.2, 0.5}[(i / 2) % 4];
    o.max_steps = std::vector<int64_t>{6, 0, 9, 1, 4}[i % 5];
    o.emulate_isolation_bug = i % 2 == 0;
    if (i % 3 == 1) o.eos_ids = std::vector<int64_t>{};
    if (i % 4 == 3) o.eos_ids = std::vector<int64_t>{stop_id};
    o.capture = capture;
    options.push_back(o);
  }
  // The free run with stop_id as EOS: it stops at step 3 at the latest.
  prompts.push_back(distinct[0]);
  options.push_back(clean(9, false));
  options.back().eos_ids = std::vector<int64_t>{stop_id};
  options.back().capture = capture;
  std::vector<GenerationResult> solo;
  for (size_t i = 0; i < prompts.size(); ++i) {
    solo.push_back(generate_tempo2025(m, prompts[i], options[i]));
  }
  bool some_eos = false, some_parallel = false;
  for (const auto& r : solo) {
    some_eos |= r.stop_reason == "eos";
    for (const auto& s : r.tree.steps) some_parallel |= s.members.size() > 1;
  }
  CHECK(some_eos);
  CHECK(some_parallel);
  for (int64_t max_batch : {1, 3, 13}) {
    auto many = generate_tempo2025_batch(m, prompts, options, max_batch);
    REQUIRE(many.size() == solo.size());
    for (size_t i = 0; i < solo.size(); ++i) {
      INFO("sequence " << i << ", max_batch " << max_batch);
      CHECK(same_run(solo[i], many[i]));
    }
  }
}

TEST_CASE("a compat batch refuses leaked masks, mixed captures and bad options",
          "[compat][batch]") {
  auto m = tiny_model();
  auto o = clean(3, true);
  auto leaking = o;
  leaking.leaked_masks = {at::ones({2, 2}).tril().to(at::kBool)};
  try {
    generate_tempo2025_batch(m, {{1, 20}, {1, 30}}, {o, leaking});
    FAIL("leaked masks were accepted");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find("leaked_masks") != std::string::npos);
  }
  auto captured = o;
  captured.capture.enabled = true;
  CHECK_THROWS_AS(generate_tempo2025_batch(m, {{1, 20}, {1, 30}}, {o, captured}), ConfigError);
  CHECK_THROWS_AS(generate_tempo2025_batch(m, {{1, 20}}, {o, o}), ConfigError);
  CHECK_THROWS_AS(generate_tempo2025_batch(m, {{1, 20}}, {o}, 0), ConfigError);
  CHECK_THROWS_AS(generate_tempo2025_batch(m, {{1, 20}, {}}, {o, o}), ConfigError);
  auto bad = o;
  bad.threshold = 0.0;
  CHECK_THROWS_AS(generate_tempo2025_batch(m, {{1, 20}}, {bad}), ConfigError);
  CHECK(generate_tempo2025_batch(m, {}, {}).empty());
}

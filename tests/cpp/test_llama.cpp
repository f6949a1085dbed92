// The decoder in C++ alone: capture semantics and the shared-position invariants.
#include <ATen/ATen.h>

#include "attnvar/error.h"
#include "attnvar/model/llama.h"
#include "attnvar/model/visibility.h"
#include "catch_compat.h"
#include "tensor_compare.h"
#include "tiny_model.h"

using namespace attnvar;
using attnvar::testing::arange_positions;
using attnvar::testing::max_abs_diff;
using attnvar::testing::tiny_model;

namespace {
CaptureSpec full_capture() {
  CaptureSpec spec;
  spec.enabled = true;
  spec.scores = true;
  return spec;
}

at::Tensor ids(std::vector<int64_t> v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); }

// Prompt [prompt], then a set of members at position P (mode), then a probe token at P+1.
struct TreeRun {
  ForwardOutput set_pass;
  ForwardOutput probe_pass;
};

TreeRun run_tree(const LlamaModel& m, const std::vector<int64_t>& prompt,
                 const std::vector<int64_t>& members, SiblingVisibility mode) {
  auto cache = m.new_cache();
  const int64_t P = prompt.size(), k = members.size();
  m.forward(cache, {ids(prompt), arange_positions(0, P), causal_visibility(P, 0)}, CaptureSpec{});
  TreeRun r;
  r.set_pass = m.forward(cache,
                         {ids(members), at::full({k}, double(P), at::kDouble),
                          set_visibility(k, P, mode)},
                         full_capture());
  r.probe_pass = m.forward(cache, {ids({9}), at::full({1}, P + 1.0, at::kDouble),
                                   causal_visibility(1, P + k)},
                           full_capture());
  return r;
}
}  // namespace

TEST_CASE("capture and fast path agree; captured rows are probability distributions",
          "[llama]") {
  auto m = tiny_model();
  auto c1 = m.new_cache(), c2 = m.new_cache();
  PassInput in{ids({3, 4, 5, 6, 7}), arange_positions(0, 5), causal_visibility(5, 0)};
  auto fast = m.forward(c1, in, CaptureSpec{});
  auto slow = m.forward(c2, in, full_capture());
  CHECK(fast.captures.empty());
  REQUIRE(slow.captures.size() == 2);
  CHECK(max_abs_diff(fast.logits, slow.logits, "fast vs capture logits") < 1e-5);
  for (const auto& cap : slow.captures) {
    CHECK(cap.probabilities.sizes() == at::IntArrayRef({4, 5, 5}));
    CHECK(max_abs_diff(cap.probabilities.sum(-1), at::ones({4, 5}), "row sums") < 1e-5);
    // Masked (future) entries: exactly 0 in α, −inf in s.
    auto hidden = causal_visibility(5, 0).logical_not();
    CHECK((cap.probabilities.masked_select(hidden.expand({4, 5, 5})) == 0).all().item<bool>());
    CHECK(at::isneginf(cap.scores.masked_select(hidden.expand({4, 5, 5}))).all().item<bool>());
  }
}

TEST_CASE("isolated siblings: permuting them permutes later attention, nothing else",
          "[llama]") {
  auto m = tiny_model("qwen3");
  const std::vector<int64_t> prompt = {1, 5, 8, 13};
  auto a = run_tree(m, prompt, {20, 21, 22}, SiblingVisibility::kIsolated);
  auto b = run_tree(m, prompt, {22, 20, 21}, SiblingVisibility::kIsolated);
  // Member outputs are independent of sibling order: row i of b is member perm[i] of a.
  auto perm = ids({2, 0, 1});
  CHECK(max_abs_diff(b.set_pass.logits, a.set_pass.logits.index_select(0, perm),
                     "isolated member logits under permutation") < 1e-5);
  for (int l = 0; l < 2; ++l) {
    auto pa = a.probe_pass.captures[l].probabilities;  // (H, 1, 4 + 3 + 1)
    auto pb = b.probe_pass.captures[l].probabilities;
    CHECK(max_abs_diff(pb.narrow(2, 4, 3), pa.narrow(2, 4, 3).index_select(2, perm),
                       "probe attention to the set, permuted") < 1e-6);
    CHECK(max_abs_diff(pb.narrow(2, 0, 4), pa.narrow(2, 0, 4), "probe attention to prompt") <
          1e-6);
    CHECK(max_abs_diff(pb.narrow(2, 7, 1), pa.narrow(2, 7, 1), "probe self-attention") < 1e-6);
  }
  CHECK(max_abs_diff(b.probe_pass.logits, a.probe_pass.logits, "probe logits") < 1e-5);
}

TEST_CASE("visible siblings see each other; isolated ones do not", "[llama]") {
  auto m = tiny_model();
  auto iso = run_tree(m, {1, 2, 3}, {10, 11}, SiblingVisibility::kIsolated);
  auto vis = run_tree(m, {1, 2, 3}, {10, 11}, SiblingVisibility::kVisible);
  for (int l = 0; l < 2; ++l) {
    auto pi = iso.set_pass.captures[l].probabilities;  // (H, 2, 5)
    auto pv = vis.set_pass.captures[l].probabilities;
    CHECK((pi.select(1, 0).select(1, 4) == 0).all().item<bool>());  // member 0 -> member 1
    CHECK((pi.select(1, 1).select(1, 3) == 0).all().item<bool>());
    CHECK((pv.select(1, 0).select(1, 4) > 0).all().item<bool>());
    CHECK((pv.select(1, 1).select(1, 3) > 0).all().item<bool>());
  }
}

TEST_CASE("forward errors leave the cache unchanged", "[llama]") {
  auto m = tiny_model();
  auto cache = m.new_cache();
  m.forward(cache, {ids({1, 2}), arange_positions(0, 2), causal_visibility(2, 0)}, CaptureSpec{});
  CHECK_THROWS_AS(
      m.forward(cache, {ids({1, 99}), arange_positions(2, 4), causal_visibility(2, 2)}, CaptureSpec{}),
      ConfigError);
  CHECK_THROWS_AS(
      m.forward(cache, {ids({1}), arange_positions(2, 3), causal_visibility(1, 0)}, CaptureSpec{}),
      ConfigError);
  PassInput knock{ids({4}), arange_positions(2, 3), causal_visibility(1, 2)};
  knock.interventions.push_back(KeyBias{0, 3, {}, {0}});  // layer window beyond 2 layers
  CHECK_THROWS_AS(m.forward(cache, knock, CaptureSpec{}), ConfigError);
  CHECK(cache.size() == 2);
}

TEST_CASE("missing or misshapen weights name the tensor", "[llama]") {
  auto c = attnvar::testing::tiny_config();
  auto t = attnvar::testing::tiny_tensors(c, 1);
  t.erase("model.layers.1.self_attn.k_proj.weight");
  try {
    LlamaModel m(c, t, "demo.safetensors");
    FAIL("no error");
  } catch (const FormatError& e) {
    std::string msg = e.what();
    CHECK(msg.find("demo.safetensors") != std::string::npos);
    CHECK(msg.find("model.layers.1.self_attn.k_proj.weight") != std::string::npos);
  }
}

TEST_CASE("a model built from a moved map holds the fused weights only", "[llama]") {
  auto c = attnvar::testing::tiny_config();
  auto t = attnvar::testing::tiny_tensors(c, 1);
  const auto q_name = "model.layers.1.self_attn.q_proj.weight";
  const auto up_name = "model.layers.0.mlp.up_proj.weight";
  const c10::weak_intrusive_ptr<c10::TensorImpl> q(t.at(q_name).getIntrusivePtr()),
      up(t.at(up_name).getIntrusivePtr());
  {
    // Copied map: the caller's tensors stay as they were.
    LlamaModel m(c, t, "tiny");
    CHECK(t.count(q_name) == 1);
    CHECK_FALSE(q.expired());
  }
  const PassInput input{ids({3, 5}), arange_positions(0, 2), causal_visibility(2, 0)};
  at::Tensor expected;
  {
    LlamaModel ref(c, t, "tiny");
    auto cache = ref.new_cache();
    expected = ref.forward(cache, input, CaptureSpec{}).logits;
  }
  LlamaModel m(c, std::move(t), "tiny");
  // Every tensor the model uses was taken out of the map, and the originals of the fused
  // q/k/v and gate/up weights were freed (the model keeps views of the fused copies).
  CHECK(t.empty());
  CHECK(q.expired());
  CHECK(up.expired());
  auto cache = m.new_cache();
  CHECK(max_abs_diff(m.forward(cache, input, CaptureSpec{}).logits, expected, "logits") == 0.0);
}

TEST_CASE("forward_batch gives each sequence bit for bit its own forward()", "[llama]") {
  auto m = tiny_model();
  // Three sequences with their own prompts, then one set pass each: widths 1, 3 and 20
  // (the last one beyond the gemv kernel's 16 rows), isolated / visible / one with a key
  // bias, captured and not.
  const std::vector<std::vector<int64_t>> prompts = {{3, 4, 5}, {9, 8}, {1, 2, 3, 4, 5, 6}};
  const std::vector<int64_t> widths = {1, 3, 20};
  const std::vector<SiblingVisibility> modes = {SiblingVisibility::kIsolated,
                                                SiblingVisibility::kVisible,
                                                SiblingVisibility::kIsolated};
  for (const bool capture : {false, true}) {
    const CaptureSpec spec = capture ? full_capture() : CaptureSpec{};
    std::vector<KVCache> solo, batch;
    std::vector<PassInput> inputs;
    for (size_t i = 0; i < prompts.size(); ++i) {
      const int64_t P = prompts[i].size(), k = widths[i];
      PassInput pre{ids(prompts[i]), arange_positions(0, P), causal_visibility(P, 0)};
      solo.push_back(m.new_cache());
      batch.push_back(m.new_cache());
      m.forward(solo.back(), pre, CaptureSpec{});
      m.forward(batch.back(), pre, CaptureSpec{});
      std::vector<int64_t> members;
      for (int64_t j = 0; j < k; ++j) members.push_back(10 + j);
      PassInput set{ids(members), at::full({k}, double(P), at::kDouble),
                    set_visibility(k, P, modes[i])};
      if (i == 2) set.interventions.push_back(KeyBias{0, 1, {}, {0, 1}, -0.5});
      if (i == 1) set.last_logits_only = true;
      inputs.push_back(set);
    }
    std::vector<ForwardOutput> expected;
    for (size_t i = 0; i < inputs.size(); ++i) {
      expected.push_back(m.forward(solo[i], inputs[i], spec));
    }
    std::vector<KVCache*> caches;
    for (auto& c : batch) caches.push_back(&c);
    auto got = m.forward_batch(caches, inputs, spec);
    REQUIRE(got.size() == expected.size());
    for (size_t i = 0; i < got.size(); ++i) {
      CHECK(at::equal(got[i].logits, expected[i].logits));
      REQUIRE(got[i].captures.size() == expected[i].captures.size());
      for (size_t l = 0; l < got[i].captures.size(); ++l) {
        CHECK(at::equal(got[i].captures[l].scores, expected[i].captures[l].scores));
        CHECK(at::equal(got[i].captures[l].probabilities,
                        expected[i].captures[l].probabilities));
      }
      CHECK(batch[i].size() == solo[i].size());
    }
  }
  // Two sequences may not share a cache; a bad input leaves every cache as it was.
  auto c = m.new_cache();
  PassInput one{ids({3}), arange_positions(0, 1), causal_visibility(1, 0)};
  CHECK_THROWS_AS(m.forward_batch({&c, &c}, {one, one}, CaptureSpec{}), ConfigError);
  auto d = m.new_cache();
  PassInput bad{ids({3}), arange_positions(0, 1), causal_visibility(1, 5)};
  CHECK_THROWS_AS(m.forward_batch({&c, &d}, {one, bad}, CaptureSpec{}), ConfigError);
  CHECK(c.size() == 0);
  CHECK(d.size() == 0);
}

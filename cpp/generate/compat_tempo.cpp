#include "attnvar/generate/compat_tempo.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "attnvar/error.h"
#include "attnvar/generate/next_step.h"
#include "attnvar/generate/selection.h"

namespace attnvar {

std::vector<int64_t> printed_set_starts(const Tree& tree) {
  std::vector<int64_t> starts;
  int64_t printed = tree.prompt_length();
  for (const auto& step : tree.steps) {
    starts.push_back(printed);
    printed += static_cast<int64_t>(step.members.size());
  }
  return starts;
}

at::Tensor tempo_bug_visibility(const Tree& tree, int64_t query_slot) {
  // Causal by default: key j ≤ query row. The prototype's mask row is indexed by the cache
  // slot but its columns mean printed indices: hide j when printed positions `query_slot`
  // and j are different members of one recorded parallel set.
  auto row = at::ones({1, query_slot + 1}, at::TensorOptions().dtype(at::kBool));
  auto starts = printed_set_starts(tree);
  for (size_t t = 0; t < tree.steps.size(); ++t) {
    const int64_t k = static_cast<int64_t>(tree.steps[t].members.size());
    if (k < 2) continue;
    const int64_t b = starts[t], e = b + k;
    if (query_slot < b || query_slot >= e) continue;
    for (int64_t j = b; j < std::min(e, query_slot + 1); ++j) {
      if (j != query_slot) row[0][j] = false;
    }
  }
  return row;
}

at::Tensor tempo_leak_mask(const Tree& tree) {
  if (tree.prompt.empty()) throw ConfigError("tempo_leak_mask: the tree has no prompt");
  // Only S_0 … S_{T−2} were recorded when the last pass built its mask.
  const size_t recorded = tree.steps.empty() ? 0 : tree.steps.size() - 1;
  const auto starts = printed_set_starts(tree);
  int64_t S = tree.prompt_length();
  for (size_t t = 0; t < recorded; ++t) S += static_cast<int64_t>(tree.steps[t].members.size());
  auto mask = at::ones({S, S}, at::TensorOptions().dtype(at::kBool)).tril();
  for (size_t t = 0; t < recorded; ++t) {
    const int64_t k = static_cast<int64_t>(tree.steps[t].members.size());
    if (k < 2) continue;
    // Within one set only the diagonal stays: causal already hides the upper part.
    mask.narrow(0, starts[t], k).narrow(1, starts[t], k).copy_(
        at::eye(k, at::TensorOptions().dtype(at::kBool)));
  }
  return mask;
}

namespace {

std::vector<at::Tensor> checked_leaked_masks(const std::vector<at::Tensor>& masks) {
  std::vector<at::Tensor> out;
  for (size_t i = 0; i < masks.size(); ++i) {
    const at::Tensor& m = masks[i];
    auto bad = [&](const std::string& what) {
      return ConfigError(fmt::format("tempo-2025: leaked mask {} {}", i, what));
    };
    if (!m.defined()) throw bad("is undefined");
    if (m.dim() != 2) throw bad(fmt::format("must be 2-D, got {} dimensions", m.dim()));
    if (m.size(0) != m.size(1)) {
      throw bad(fmt::format("must be square, got {} x {}", m.size(0), m.size(1)));
    }
    if (m.scalar_type() != at::kBool) {
      throw bad(fmt::format("must be bool (true = visible), got {}", c10::toString(m.scalar_type())));
    }
    if (m.size(0) == 0) throw bad("is empty (0 x 0)");
    out.push_back(m.to(at::kCPU));
  }
  return out;
}

// ANDs into a pass's (T, W) visibility, whose first query sits at cache slot `first_slot`,
// row clamp(first_slot, 0, S − 1) of every kept mask, over keys 0 … min(S, W) − 1.
void apply_leaks(at::Tensor& vis, int64_t first_slot, const std::vector<at::Tensor>& masks) {
  for (const auto& m : masks) {
    const int64_t S = m.size(0);
    const int64_t r = std::clamp<int64_t>(first_slot, 0, S - 1);
    const int64_t keys = std::min(S, vis.size(1));
    vis.narrow(1, 0, keys).logical_and_(m[r].narrow(0, 0, keys).unsqueeze(0));
  }
}

}  // namespace

GenerationResult generate_tempo2025(const LlamaModel& model, const std::vector<int64_t>& prompt,
                                    const TempoOptions& o, const InterruptCheck& interrupt) {
  const ModelConfig& cfg = model.config();
  validate(SelectionOptions{o.threshold, cfg.vocab_size, false});
  if (o.max_steps < 0) throw ConfigError(fmt::format("max_steps must be ≥ 0, got {}", o.max_steps));
  if (prompt.empty()) throw ConfigError("tempo-2025: the prompt is empty (no tokens)");
  for (int64_t id : prompt) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw ConfigError(fmt::format("tempo-2025: prompt token {} is outside the vocabulary", id));
    }
  }
  const std::vector<int64_t> eos = o.eos_ids ? *o.eos_ids : cfg.eos_token_ids;
  for (int64_t id : eos) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw ConfigError(fmt::format("tempo-2025: eos id {} is outside the vocabulary [0, {})",
                                    id, cfg.vocab_size));
    }
  }
  const std::vector<at::Tensor> leaks = checked_leaked_masks(o.leaked_masks);
  auto is_eos = [&](int64_t id) { return std::find(eos.begin(), eos.end(), id) != eos.end(); };
  auto longs = at::TensorOptions().dtype(at::kLong);
  auto dbl = at::TensorOptions().dtype(at::kDouble);

  GenerationResult r;
  r.tree.prompt = prompt;
  const int64_t P = static_cast<int64_t>(prompt.size());
  auto cache = model.new_cache(P + o.max_steps + 2);
  auto t0 = std::chrono::steady_clock::now();
  auto emit = [&](int64_t step, int64_t first, ForwardOutput& out) {
    if (o.capture.records()) {
      r.passes.push_back(PassCapture{step, first, 1, std::move(out.captures), std::move(out.hooks)});
    }
  };

  // Each pass's visibility as applied, kept for r.visibility: the prefill's block, then one
  // row per fed slot.
  std::vector<at::Tensor> applied;
  PassInput prefill{at::tensor(prompt, longs), at::arange(0, P, dbl), causal_visibility(P, 0)};
  prefill.last_logits_only = true;
  apply_leaks(prefill.visibility, 0, leaks);
  applied.push_back(prefill.visibility);
  auto pre = model.forward(cache, prefill, o.capture);
  if (o.capture.records()) {
    r.passes.push_back(PassCapture{-1, 0, P, std::move(pre.captures), std::move(pre.hooks)});
  }
  for (int64_t i = 0; i < P; ++i) r.slots.push_back(SlotRecord{prompt[i], double(i), -1, -1});

  // Slot P: the last prompt token a second time, at position P.
  auto feed = [&](int64_t token, int64_t step_of_member, int64_t member) {
    const int64_t slot = cache.size();
    auto vis = o.emulate_isolation_bug ? tempo_bug_visibility(r.tree, slot)
                                       : causal_visibility(1, slot);
    apply_leaks(vis, slot, leaks);
    applied.push_back(vis);
    PassInput in{at::tensor(std::vector<int64_t>{token}, longs),
                 at::full({1}, static_cast<double>(slot), dbl), vis};
    auto out = model.forward(cache, in, o.capture);
    r.slots.push_back(SlotRecord{token, static_cast<double>(slot), step_of_member, member});
    emit(step_of_member, slot, out);
    return at::softmax(out.logits[0], -1);
  };
  at::Tensor q = feed(prompt.back(), -1, -1);
  r.prefill_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();

  r.stop_reason = "max_steps";
  const SelectionOptions sel{o.threshold, cfg.vocab_size, false};
  for (int64_t t = 0; t < o.max_steps; ++t) {
    if (interrupt) interrupt();
    TreeStep step;
    step.entropy = entropy_nats(q);
    for (const auto& s : select_set(q, sel)) {
      Member m;
      m.token_id = s.token_id;
      m.probability = s.probability;
      m.rank = static_cast<int64_t>(step.members.size());
      m.is_eos = is_eos(s.token_id);
      step.members.push_back(m);
    }
    const bool any_eos = std::any_of(step.members.begin(), step.members.end(),
                                     [](const Member& m) { return m.is_eos; });
    r.tree.steps.push_back(std::move(step));
    if (any_eos) {
      r.stop_reason = "eos";
      break;
    }
    if (t + 1 == o.max_steps) break;  // the final set is never fed
    TreeStep& cur = r.tree.steps.back();
    const int64_t last = static_cast<int64_t>(cur.members.size()) - 1;
    cur.members[last].slot = cache.size();
    q = feed(cur.members[last].token_id, t, last);
  }
  r.generate_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const int64_t N = static_cast<int64_t>(r.slots.size());
  r.visibility = at::zeros({N, N}, at::TensorOptions().dtype(at::kBool));
  int64_t row = 0;
  for (const auto& v : applied) {
    r.visibility.narrow(0, row, v.size(0)).narrow(1, 0, v.size(1)).copy_(v);
    row += v.size(0);
  }
  return r;
}

}  // namespace attnvar

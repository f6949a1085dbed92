#include "attnvar/generate/compat_tempo.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

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
  auto is_eos = [&](int64_t id) { return std::find(eos.begin(), eos.end(), id) != eos.end(); };
  auto longs = at::TensorOptions().dtype(at::kLong);
  auto dbl = at::TensorOptions().dtype(at::kDouble);

  GenerationResult r;
  r.tree.prompt = prompt;
  const int64_t P = static_cast<int64_t>(prompt.size());
  auto cache = model.new_cache(P + o.max_steps + 2);
  auto t0 = std::chrono::steady_clock::now();
  auto emit = [&](int64_t step, int64_t first, ForwardOutput& out) {
    if (o.capture.enabled) r.passes.push_back(PassCapture{step, first, 1, std::move(out.captures)});
  };

  PassInput prefill{at::tensor(prompt, longs), at::arange(0, P, dbl), causal_visibility(P, 0)};
  prefill.last_logits_only = true;
  auto pre = model.forward(cache, prefill, o.capture);
  if (o.capture.enabled) r.passes.push_back(PassCapture{-1, 0, P, std::move(pre.captures)});
  for (int64_t i = 0; i < P; ++i) r.slots.push_back(SlotRecord{prompt[i], double(i), -1, -1});

  // Slot P: the last prompt token a second time, at position P.
  auto feed = [&](int64_t token, int64_t step_of_member, int64_t member) {
    const int64_t slot = cache.size();
    auto vis = o.emulate_isolation_bug ? tempo_bug_visibility(r.tree, slot)
                                       : causal_visibility(1, slot);
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
  return r;
}

}  // namespace attnvar

#include "attnvar/generate/compat_tempo.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "attnvar/error.h"
#include "attnvar/generate/next_step.h"
#include "attnvar/generate/selection.h"
#include "attnvar/generate/sequence_run.h"

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

// The checks of one compat run (ConfigError naming the option), before any pass.
void check_request(const ModelConfig& cfg, const std::vector<int64_t>& prompt,
                   const TempoOptions& o) {
  validate(SelectionOptions{o.threshold, cfg.vocab_size, false});
  if (o.max_steps < 0) throw ConfigError(fmt::format("max_steps must be ≥ 0, got {}", o.max_steps));
  if (prompt.empty()) throw ConfigError("tempo-2025: the prompt is empty (no tokens)");
  for (int64_t id : prompt) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw ConfigError(fmt::format("tempo-2025: prompt token {} is outside the vocabulary", id));
    }
  }
  for (int64_t id : o.eos_ids ? *o.eos_ids : cfg.eos_token_ids) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw ConfigError(fmt::format("tempo-2025: eos id {} is outside the vocabulary [0, {})",
                                    id, cfg.vocab_size));
    }
  }
  checked_leaked_masks(o.leaked_masks);
}

// One compat run as a sequence of one-token passes: the prompt's prefill, the duplicate of
// its last token at slot P (whose logits give S_0), then the last member of each set but the
// final one. generate_tempo2025 runs one (run_alone); generate_tempo2025_batch runs several
// (run_batch), their one-token passes through forward_batch.
class TempoSequence final : public SequenceRun {
 public:
  TempoSequence(const LlamaModel& model, const std::vector<int64_t>& prompt,
                const TempoOptions& o)
      : model_(model),
        o_(o),
        eos_(o.eos_ids ? *o.eos_ids : model.config().eos_token_ids),
        leaks_(checked_leaked_masks(o.leaked_masks)),
        P_(static_cast<int64_t>(prompt.size())),
        cache_(model.new_cache(P_ + o.max_steps + 2)),
        sel_{o.threshold, model.config().vocab_size, false} {
    r_.tree.prompt = prompt;
    r_.stop_reason = "max_steps";
  }

  // The prompt's pass (causal, and the leaks' rows). Its logits are never read: S_0 comes
  // from the duplicate's pass, select()'s first.
  void prefill(const Prefill* from, std::shared_ptr<const Prefill>* keep) override {
    t0_ = std::chrono::steady_clock::now();
    const auto& prompt = r_.tree.prompt;
    PassInput in{at::tensor(prompt, at::TensorOptions().dtype(at::kLong)),
                 at::arange(0, P_, at::TensorOptions().dtype(at::kDouble)),
                 causal_visibility(P_, 0)};
    in.no_logits = true;
    apply_leaks(in.visibility, 0, leaks_);
    applied_.push_back(in.visibility);
    ForwardOutput out = shared_prefill(model_, cache_, P_, from, keep,
                                       [&] { return model_.forward(cache_, in, o_.capture); });
    emit(-1, 0, P_, out);
    for (int64_t i = 0; i < P_; ++i) r_.slots.push_back(SlotRecord{prompt[i], double(i), -1, -1});
  }

  // First the duplicate of the last prompt token; then S_t from q_t, recorded in the tree,
  // and its last member's pass unless the run stops here (an EOS member, or the final set,
  // which is never fed).
  bool select(PassInput* in) override {
    if (!q_.defined()) {
      *in = feed(r_.tree.prompt.back(), -1, -1);
      return true;
    }
    TreeStep step;
    step.entropy = entropy_nats(q_);
    for (const auto& s : select_set(q_, sel_)) {
      Member m;
      m.token_id = s.token_id;
      m.probability = s.probability;
      m.rank = static_cast<int64_t>(step.members.size());
      m.is_eos = std::find(eos_.begin(), eos_.end(), s.token_id) != eos_.end();
      step.members.push_back(m);
    }
    const bool any_eos = std::any_of(step.members.begin(), step.members.end(),
                                     [](const Member& m) { return m.is_eos; });
    r_.tree.steps.push_back(std::move(step));
    if (any_eos) {
      r_.stop_reason = "eos";
      return false;
    }
    if (t_ + 1 == o_.max_steps) return false;
    TreeStep& cur = r_.tree.steps.back();
    const int64_t last = static_cast<int64_t>(cur.members.size()) - 1;
    cur.members[last].slot = cache_.size();
    *in = feed(cur.members[last].token_id, t_, last);
    return true;
  }

  void after_pass(ForwardOutput&& out) override {
    emit(pass_step_, pass_slot_, 1, out);
    q_ = at::softmax(out.logits[0], -1);
    if (pass_step_ < 0) {  // the duplicate's pass ends the prefill
      r_.prefill_seconds = seconds_since(t0_);
      t0_ = std::chrono::steady_clock::now();
    }
  }

  void end_step(bool fed) override {
    if (!fed) {
      done_ = true;
    } else if (pass_step_ < 0) {
      done_ = o_.max_steps == 0;
    } else {
      ++t_;
    }
  }

  bool done() const override { return done_; }
  KVCache* cache() override { return &cache_; }

  GenerationResult finish() override {
    r_.generate_seconds = seconds_since(t0_);
    const int64_t N = static_cast<int64_t>(r_.slots.size());
    r_.visibility = at::zeros({N, N}, at::TensorOptions().dtype(at::kBool));
    int64_t row = 0;
    for (const auto& v : applied_) {
      r_.visibility.narrow(0, row, v.size(0)).narrow(1, 0, v.size(1)).copy_(v);
      row += v.size(0);
    }
    return std::move(r_);
  }

 private:
  static double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  // The pass of one token at the next slot (its position), with the mode's visibility and
  // the leaks' rows; `step_of_member`, `member`: what the slot records (-1: the duplicate).
  PassInput feed(int64_t token, int64_t step_of_member, int64_t member) {
    const int64_t slot = cache_.size();
    auto vis = o_.emulate_isolation_bug ? tempo_bug_visibility(r_.tree, slot)
                                        : causal_visibility(1, slot);
    apply_leaks(vis, slot, leaks_);
    applied_.push_back(vis);
    r_.slots.push_back(SlotRecord{token, static_cast<double>(slot), step_of_member, member});
    pass_step_ = step_of_member;
    pass_slot_ = slot;
    return PassInput{at::tensor(std::vector<int64_t>{token}, at::TensorOptions().dtype(at::kLong)),
                     at::full({1}, static_cast<double>(slot),
                              at::TensorOptions().dtype(at::kDouble)),
                     vis};
  }

  void emit(int64_t step, int64_t first, int64_t queries, ForwardOutput& out) {
    if (o_.capture.records()) {
      r_.passes.push_back(
          PassCapture{step, first, queries, std::move(out.captures), std::move(out.hooks)});
    }
  }

  const LlamaModel& model_;
  TempoOptions o_;
  std::vector<int64_t> eos_;
  std::vector<at::Tensor> leaks_;
  int64_t P_;
  KVCache cache_;
  SelectionOptions sel_;
  GenerationResult r_;
  // Each pass's visibility as applied, for r_.visibility: the prefill's block, then one row
  // per fed slot.
  std::vector<at::Tensor> applied_;
  at::Tensor q_;  // undefined until the duplicate's pass
  int64_t t_ = 0, pass_step_ = -1, pass_slot_ = 0;
  bool done_ = false;
  std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

}  // namespace

GenerationResult generate_tempo2025(const LlamaModel& model, const std::vector<int64_t>& prompt,
                                    const TempoOptions& o, const InterruptCheck& interrupt) {
  check_request(model.config(), prompt, o);
  TempoSequence seq(model, prompt, o);
  return run_alone(model, seq, o.capture, interrupt);
}

std::vector<GenerationResult> generate_tempo2025_batch(
    const LlamaModel& model, const std::vector<std::vector<int64_t>>& prompts,
    const std::vector<TempoOptions>& options, int64_t max_batch,
    const InterruptCheck& interrupt) {
  check_batch("generate_tempo2025_batch", prompts.size(), options.size(), max_batch,
              [&](size_t i) -> const CaptureSpec& { return options[i].capture; });
  for (size_t i = 0; i < prompts.size(); ++i) {
    check_request(model.config(), prompts[i], options[i]);
    if (!options[i].leaked_masks.empty()) {
      throw ConfigError(fmt::format(
          "generate_tempo2025_batch: sequence {} has leaked_masks: under the stale-mask leak "
          "each run depends on the runs before it (the masks they left), so such runs cannot "
          "run together; run them one after another with generate_tempo2025",
          i));
    }
  }
  // Without leaked masks a prefill depends on the prompt and the capture only: every
  // sequence of a prompt can share it (threshold, mode and steps act after it).
  return run_batch(
      model, prompts.size(),
      [&](size_t i) { return std::make_unique<TempoSequence>(model, prompts[i], options[i]); },
      [&](size_t i) { return &prompts[i]; },
      options.empty() ? CaptureSpec{} : options.front().capture, max_batch, interrupt);
}

}  // namespace attnvar

#include "attnvar/generate/generator.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <memory>

#include "attnvar/error.h"
#include "attnvar/generate/selection.h"
#include "attnvar/generate/sequence_run.h"

namespace attnvar {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

StopOn stop_on_from_string(const std::string& name) {
  if (name == "any_eos") return StopOn::kAnyEos;
  if (name == "top_eos") return StopOn::kTopEos;
  throw ConfigError("stop_on '" + name + "' is not one of any_eos, top_eos");
}

void validate(const GenerateOptions& o, int64_t vocab_size) {
  validate(SelectionOptions{o.threshold, o.max_width, o.sample});
  if (o.max_steps < 0) throw ConfigError(fmt::format("max_steps must be ≥ 0, got {}", o.max_steps));
  if (o.min_new_steps < 0) {
    throw ConfigError(fmt::format("min_new_steps must be ≥ 0, got {}", o.min_new_steps));
  }
  if (!(o.temperature > 0.0) || !std::isfinite(o.temperature)) {
    throw ConfigError(fmt::format("temperature must be positive, got {}", o.temperature));
  }
  for (int64_t id : o.eos_ids) {
    if (id < 0 || id >= vocab_size) {
      throw ConfigError(fmt::format("eos id {} is outside the vocabulary [0, {})", id, vocab_size));
    }
  }
}

namespace {

// q with the EOS ids' mass removed and the rest renormalised; q itself when nothing else
// has mass (a distribution that is all EOS cannot be forced to continue).
at::Tensor without_eos(const at::Tensor& q, const std::vector<int64_t>& eos) {
  if (eos.empty()) return q;
  at::Tensor out = q.clone();
  out.index_fill_(0, at::tensor(eos, at::TensorOptions().dtype(at::kLong)), 0.0);
  const double rest = out.sum().item<double>();
  return rest > 0.0 ? out / rest : q;
}

void check_prompt(const std::vector<int64_t>& prompt, int64_t vocab_size) {
  if (prompt.empty()) throw ConfigError("generate: the prompt is empty (no tokens)");
  for (int64_t id : prompt) {
    if (id < 0 || id >= vocab_size) {
      throw ConfigError(fmt::format("generate: prompt token {} is outside the vocabulary", id));
    }
  }
}

// Whether a sequence's prefill is the same computation as any other's of the same prompt
// (and capture, which a batch shares): no hook edits or functions act on it.
bool prefill_shareable(const GenerateOptions& o) {
  return o.edits.empty() && (o.callbacks == nullptr || o.callbacks->empty());
}

// One generation as a sequence of passes: its prefill, then one pass per set. generate()
// runs one (run_alone); generate_batch() runs several (run_batch), their set passes through
// forward_batch.
class Sequence final : public SequenceRun {
 public:
  Sequence(const LlamaModel& model, const std::vector<int64_t>& prompt, const GenerateOptions& o,
           const PassSink& sink)
      : model_(model),
        o_(o),
        sink_(sink),
        eos_(o.eos_ids.empty() ? model.config().eos_token_ids : o.eos_ids),
        gen_(at::make_generator<at::CPUGeneratorImpl>(o.seed)),
        P_(static_cast<int64_t>(prompt.size())),
        cache_(model.new_cache(P_ + std::min<int64_t>(o.max_steps * 4, 4096) + 1)),
        sel_{o.threshold, o.max_width, o.sample} {
    r_.tree.prompt = prompt;
    r_.stop_reason = "max_steps";
  }

  // The prefill pass and q_0. After it, done() when max_steps is 0.
  void prefill(const Prefill* from, std::shared_ptr<const Prefill>* keep) override {
    auto t0 = std::chrono::steady_clock::now();
    const auto& prompt = r_.tree.prompt;
    for (int64_t i = 0; i < P_; ++i) {
      r_.slots.push_back(SlotRecord{prompt[i], static_cast<double>(i), -1, -1});
    }
    ForwardOutput out = shared_prefill(model_, cache_, P_, from, keep, [&] {
      auto dbl = at::TensorOptions().dtype(at::kDouble);
      PassInput in{at::tensor(prompt, at::TensorOptions().dtype(at::kLong)),
                   at::arange(0, P_, dbl), causal_visibility(P_, 0)};
      for (int64_t i = 0; i < P_; ++i) {
        in.slots.push_back(SlotInfo{static_cast<double>(i), -1, 0, prompt[i]});
      }
      in.last_logits_only = true;
      attach_edits(in);
      return model_.forward(cache_, in, o_.capture);
    });
    emit(PassCapture{-1, 0, P_, std::move(out.captures), std::move(out.hooks)});
    q_ = at::softmax(out.logits[0] / o_.temperature, -1);  // q_0
    r_.prefill_seconds = seconds_since(t0);
    started_ = std::chrono::steady_clock::now();
    done_ = o_.max_steps == 0;
  }

  // Selects S_t and records it in the tree. Returns true with *in filled when the set
  // has members to feed; false when it has none (the run then stops).
  bool select(PassInput* in) override {
    const int64_t t = t_;
    if (o_.keep_distributions) kept_.push_back(q_);
    TreeStep step;
    step.entropy = entropy_nats(q_);
    fed_ids_.clear();
    fed_probs_.clear();
    std::vector<SlotInfo> fed_slots;
    const bool no_eos = t < o_.min_new_steps;
    for (const auto& s : select_set(no_eos ? without_eos(q_, eos_) : q_, sel_, gen_)) {
      Member m;
      m.token_id = s.token_id;
      m.probability = s.probability;
      m.rank = static_cast<int64_t>(step.members.size());
      m.is_eos = is_eos(s.token_id);
      if (!m.is_eos) {
        m.slot = cache_.size() + static_cast<int64_t>(fed_ids_.size());
        fed_ids_.push_back(m.token_id);
        fed_probs_.push_back(m.probability);
        fed_slots.push_back(SlotInfo{static_cast<double>(P_ + t), t, m.rank, m.token_id});
        r_.slots.push_back(SlotRecord{m.token_id, static_cast<double>(P_ + t), t,
                                      static_cast<int64_t>(step.members.size())});
      }
      step.members.push_back(m);
    }
    stop_ = o_.stop_on == StopOn::kAnyEos
                ? std::any_of(step.members.begin(), step.members.end(),
                              [](const Member& m) { return m.is_eos; })
                : step.members.front().is_eos;
    r_.tree.steps.push_back(std::move(step));
    if (fed_ids_.empty()) return false;
    const int64_t k = static_cast<int64_t>(fed_ids_.size());
    auto dbl = at::TensorOptions().dtype(at::kDouble);
    *in = PassInput{at::tensor(fed_ids_, at::TensorOptions().dtype(at::kLong)),
                    at::full({k}, static_cast<double>(P_ + t), dbl),
                    set_visibility(k, cache_.size(), o_.mode), std::move(fed_slots)};
    // The last set is fed for its slots and capture only: no q_{t+1} after it.
    last_ = stop_ || t + 1 == o_.max_steps;
    in->no_logits = last_;
    attach_edits(*in);
    first_ = cache_.size();
    return true;
  }

  // After the set's pass (when select() asked for one): its capture and q_{t+1}; then
  // whether the run goes on.
  void after_pass(ForwardOutput&& out) override {
    emit(PassCapture{t_, first_, static_cast<int64_t>(fed_ids_.size()),
                     std::move(out.captures), std::move(out.hooks)});
    if (!last_) q_ = next_distribution(out.logits, fed_probs_, o_.policy, o_.temperature);
  }

  void end_step(bool fed) override {
    if (stop_ || !fed) {
      r_.stop_reason = "eos";
      done_ = true;
    } else if (++t_ >= o_.max_steps) {
      done_ = true;
    }
  }

  bool done() const override { return done_; }
  KVCache* cache() override { return &cache_; }

  GenerationResult finish() override {
    if (o_.keep_distributions && !kept_.empty()) r_.distributions = at::stack(kept_).cpu();
    r_.generate_seconds = seconds_since(started_);
    return std::move(r_);
  }

 private:
  bool is_eos(int64_t id) const { return std::find(eos_.begin(), eos_.end(), id) != eos_.end(); }

  // The run's hook edits (prepared once, before the prefill) and functions, on a pass.
  void attach_edits(PassInput& in) const {
    in.edits = o_.edits;
    in.callbacks = o_.callbacks;
    in.edits_prepared = true;
  }

  void emit(PassCapture&& pc) {
    if (!o_.capture.records()) return;
    if (sink_) {
      sink_(std::move(pc));
    } else {
      r_.passes.push_back(std::move(pc));
    }
  }

  const LlamaModel& model_;
  GenerateOptions o_;
  PassSink sink_;
  std::vector<int64_t> eos_;
  at::Generator gen_;
  int64_t P_;
  KVCache cache_;
  SelectionOptions sel_;
  GenerationResult r_;
  at::Tensor q_;
  std::vector<at::Tensor> kept_;
  std::vector<int64_t> fed_ids_;
  std::vector<double> fed_probs_;
  int64_t t_ = 0, first_ = 0;
  bool stop_ = false, last_ = false, done_ = false;
  std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
};

}  // namespace

GenerationResult generate(const LlamaModel& model, const std::vector<int64_t>& prompt,
                          const GenerateOptions& o, const InterruptCheck& interrupt,
                          const PassSink& sink) {
  validate(o, model.config().vocab_size);
  check_prompt(prompt, model.config().vocab_size);
  GenerateOptions prepared = o;
  prepared.edits = model.prepare_edits(o.edits);
  Sequence seq(model, prompt, prepared, sink);
  return run_alone(model, seq, prepared.capture, interrupt);
}

std::vector<GenerationResult> generate_batch(const LlamaModel& model,
                                             const std::vector<std::vector<int64_t>>& prompts,
                                             const std::vector<GenerateOptions>& options,
                                             int64_t max_batch, const InterruptCheck& interrupt) {
  check_batch("generate_batch", prompts.size(), options.size(), max_batch,
              [&](size_t i) -> const CaptureSpec& { return options[i].capture; });
  for (size_t i = 0; i < prompts.size(); ++i) {
    validate(options[i], model.config().vocab_size);
    check_prompt(prompts[i], model.config().vocab_size);
  }
  std::vector<GenerateOptions> prepared = options;
  for (GenerateOptions& o : prepared) o.edits = model.prepare_edits(o.edits);
  return run_batch(
      model, prompts.size(),
      [&](size_t i) {
        return std::make_unique<Sequence>(model, prompts[i], prepared[i], PassSink{});
      },
      [&](size_t i) { return prefill_shareable(prepared[i]) ? &prompts[i] : nullptr; },
      prepared.empty() ? CaptureSpec{} : prepared.front().capture, max_batch, interrupt);
}

}  // namespace attnvar

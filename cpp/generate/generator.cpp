#include "attnvar/generate/generator.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>

#include "attnvar/error.h"
#include "attnvar/generate/selection.h"

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

// A prompt's prefill pass, kept to start other sequences of the same prompt in a batch:
// the prefill depends only on the tokens, the model and the capture spec (no edits), so
// copying its output and cache rows gives each sequence exactly what its own pass would
// (a study batches each prompt's conditions together: four prefills become one).
struct Prefill {
  ForwardOutput out;
  KVCache cache;  // the prompt's slots only
};

// Whether a sequence's prefill is the same computation as any other's of the same prompt
// (and capture, which a batch shares): no hook edits or functions act on it.
bool prefill_shareable(const GenerateOptions& o) {
  return o.edits.empty() && (o.callbacks == nullptr || o.callbacks->empty());
}

// A deep copy: each run owns its captured tensors.
ForwardOutput copy_of(const ForwardOutput& o) {
  const auto clone = [](const at::Tensor& t) { return t.defined() ? t.clone() : t; };
  ForwardOutput c;
  c.logits = clone(o.logits);
  for (const LayerCapture& lc : o.captures) {
    c.captures.push_back(LayerCapture{lc.layer, clone(lc.probabilities), clone(lc.scores),
                                      clone(lc.value_norms)});
  }
  for (const auto& [name, t] : o.hooks) c.hooks.emplace(name, clone(t));
  return c;
}

// One generation as a sequence of passes: its prefill, then one pass per set. generate()
// runs one; generate_batch() runs several, their set passes through forward_batch. Both
// call the same steps in the same order, so a sequence's result does not depend on the
// company it keeps.
class Sequence {
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

  // The prefill pass and q_0. After it, done() when max_steps is 0. With `from`, the pass
  // is not run again: its output and cache rows are copied from an identical prefill (see
  // Prefill); with `keep`, this prefill is kept there for others.
  void prefill(const Prefill* from = nullptr, std::shared_ptr<const Prefill>* keep = nullptr) {
    auto t0 = std::chrono::steady_clock::now();
    const auto& prompt = r_.tree.prompt;
    for (int64_t i = 0; i < P_; ++i) {
      r_.slots.push_back(SlotRecord{prompt[i], static_cast<double>(i), -1, -1});
    }
    ForwardOutput out;
    if (from != nullptr) {
      cache_.copy_prefix_from(from->cache, P_);
      out = copy_of(from->out);
    } else {
      auto dbl = at::TensorOptions().dtype(at::kDouble);
      PassInput in{at::tensor(prompt, at::TensorOptions().dtype(at::kLong)),
                   at::arange(0, P_, dbl), causal_visibility(P_, 0)};
      for (int64_t i = 0; i < P_; ++i) {
        in.slots.push_back(SlotInfo{static_cast<double>(i), -1, 0, prompt[i]});
      }
      in.last_logits_only = true;
      attach_edits(in);
      out = model_.forward(cache_, in, o_.capture);
      if (keep != nullptr) {
        auto kept = std::make_shared<Prefill>(Prefill{copy_of(out), model_.new_cache(P_)});
        kept->cache.copy_prefix_from(cache_, P_);
        *keep = std::move(kept);
      }
    }
    emit(PassCapture{-1, 0, P_, std::move(out.captures), std::move(out.hooks)});
    q_ = at::softmax(out.logits[0] / o_.temperature, -1);  // q_0
    r_.prefill_seconds = seconds_since(t0);
    started_ = std::chrono::steady_clock::now();
    done_ = o_.max_steps == 0;
  }

  // Selects S_t and records it in the tree. Returns true with *in filled when the set
  // has members to feed; false when it has none (the run then stops).
  bool select(PassInput* in) {
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
  void after_pass(ForwardOutput&& out) {
    emit(PassCapture{t_, first_, static_cast<int64_t>(fed_ids_.size()),
                     std::move(out.captures), std::move(out.hooks)});
    if (!last_) q_ = next_distribution(out.logits, fed_probs_, o_.policy, o_.temperature);
  }

  void end_step(bool fed) {
    if (stop_ || !fed) {
      r_.stop_reason = "eos";
      done_ = true;
    } else if (++t_ >= o_.max_steps) {
      done_ = true;
    }
  }

  bool done() const { return done_; }
  KVCache* cache() { return &cache_; }

  GenerationResult finish() {
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
  seq.prefill();
  while (!seq.done()) {
    if (interrupt) interrupt();
    PassInput in;
    const bool fed = seq.select(&in);
    if (fed) seq.after_pass(model.forward(*seq.cache(), in, prepared.capture));
    seq.end_step(fed);
  }
  return seq.finish();
}

std::vector<GenerationResult> generate_batch(const LlamaModel& model,
                                             const std::vector<std::vector<int64_t>>& prompts,
                                             const std::vector<GenerateOptions>& options,
                                             int64_t max_batch, const InterruptCheck& interrupt) {
  if (prompts.size() != options.size()) {
    throw ConfigError(fmt::format("generate_batch: {} prompts for {} option sets", prompts.size(),
                                  options.size()));
  }
  if (max_batch < 1) throw ConfigError(fmt::format("max_batch must be ≥ 1, got {}", max_batch));
  for (size_t i = 0; i < prompts.size(); ++i) {
    validate(options[i], model.config().vocab_size);
    check_prompt(prompts[i], model.config().vocab_size);
    if (!(options[i].capture == options[0].capture)) {
      throw ConfigError("generate_batch: every sequence must capture the same layers, heads "
                        "and fields (one pass computes them together)");
    }
  }
  std::vector<GenerateOptions> prepared = options;
  for (GenerateOptions& o : prepared) o.edits = model.prepare_edits(o.edits);
  std::vector<GenerationResult> results(prompts.size());
  // Shareable prefills by prompt, and how many sequences that could share each are still to
  // start.
  std::map<std::vector<int64_t>, std::shared_ptr<const Prefill>> prefills;
  std::map<std::vector<int64_t>, int64_t> uses;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prefill_shareable(prepared[i])) ++uses[prompts[i]];
  }
  std::vector<std::pair<size_t, std::unique_ptr<Sequence>>> active;
  size_t next = 0;
  while (next < prompts.size() || !active.empty()) {
    if (interrupt) interrupt();
    // Refill: a new sequence's prefill is a pass of its own (its many rows would not be
    // cheaper together, and a solo prefill is what its solo run computes), run once for
    // every sequence of the same prompt (Prefill).
    while (static_cast<int64_t>(active.size()) < max_batch && next < prompts.size()) {
      auto seq = std::make_unique<Sequence>(model, prompts[next], prepared[next], PassSink{});
      if (!prefill_shareable(prepared[next])) {
        seq->prefill();
      } else {
        // Kept while a later sequence of the batch may still start from it.
        auto& kept = prefills[prompts[next]];
        const bool again = --uses[prompts[next]] > 0;
        seq->prefill(kept.get(), kept == nullptr && again ? &kept : nullptr);
        if (!again) prefills.erase(prompts[next]);
      }
      if (seq->done()) {
        results[next] = seq->finish();
      } else {
        active.emplace_back(next, std::move(seq));
      }
      ++next;
    }
    if (active.empty()) continue;
    std::vector<PassInput> inputs;
    std::vector<KVCache*> caches;
    std::vector<Sequence*> fed_seqs;
    std::vector<bool> fed(active.size());
    for (size_t i = 0; i < active.size(); ++i) {
      PassInput in;
      fed[i] = active[i].second->select(&in);
      if (fed[i]) {
        inputs.push_back(std::move(in));
        caches.push_back(active[i].second->cache());
        fed_seqs.push_back(active[i].second.get());
      }
    }
    if (!inputs.empty()) {
      auto outs = model.forward_batch(caches, inputs, options[active.front().first].capture);
      for (size_t k = 0; k < outs.size(); ++k) fed_seqs[k]->after_pass(std::move(outs[k]));
    }
    std::vector<std::pair<size_t, std::unique_ptr<Sequence>>> still;
    for (size_t i = 0; i < active.size(); ++i) {
      active[i].second->end_step(fed[i]);
      if (active[i].second->done()) {
        results[active[i].first] = active[i].second->finish();
      } else {
        still.push_back(std::move(active[i]));
      }
    }
    active = std::move(still);
  }
  return results;
}

}  // namespace attnvar

#include "attnvar/generate/sequence_run.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <map>
#include <utility>

#include "attnvar/error.h"

namespace attnvar {

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

ForwardOutput shared_prefill(const LlamaModel& model, KVCache& cache, int64_t prompt_length,
                             const Prefill* from, std::shared_ptr<const Prefill>* keep,
                             const std::function<ForwardOutput()>& run) {
  if (from != nullptr) {
    cache.copy_prefix_from(from->cache, prompt_length);
    return copy_of(from->out);
  }
  ForwardOutput out = run();
  if (keep != nullptr) {
    auto kept = std::make_shared<Prefill>(Prefill{copy_of(out), model.new_cache(prompt_length)});
    kept->cache.copy_prefix_from(cache, prompt_length);
    *keep = std::move(kept);
  }
  return out;
}

GenerationResult run_alone(const LlamaModel& model, SequenceRun& seq, const CaptureSpec& capture,
                           const InterruptCheck& interrupt) {
  seq.prefill(nullptr, nullptr);
  while (!seq.done()) {
    if (interrupt) interrupt();
    PassInput in;
    const bool fed = seq.select(&in);
    if (fed) seq.after_pass(model.forward(*seq.cache(), in, capture));
    seq.end_step(fed);
  }
  return seq.finish();
}

void check_batch(const std::string& what, size_t num_prompts, size_t num_options,
                 int64_t max_batch, const std::function<const CaptureSpec&(size_t)>& capture_of) {
  if (num_prompts != num_options) {
    throw ConfigError(fmt::format("{}: {} prompts for {} option sets", what, num_prompts,
                                  num_options));
  }
  if (max_batch < 1) throw ConfigError(fmt::format("max_batch must be ≥ 1, got {}", max_batch));
  for (size_t i = 1; i < num_options; ++i) {
    if (!(capture_of(i) == capture_of(0))) {
      throw ConfigError(fmt::format("{}: every sequence must capture the same layers, heads "
                                    "and fields (one pass computes them together)", what));
    }
  }
}

std::vector<GenerationResult> run_batch(
    const LlamaModel& model, size_t count,
    const std::function<std::unique_ptr<SequenceRun>(size_t)>& make,
    const std::function<const std::vector<int64_t>*(size_t)>& shared_prompt,
    const CaptureSpec& capture, int64_t max_batch, const InterruptCheck& interrupt) {
  std::vector<GenerationResult> results(count);
  // Shareable prefills by prompt, and how many sequences that could share each are still to
  // start.
  std::map<std::vector<int64_t>, std::shared_ptr<const Prefill>> prefills;
  std::map<std::vector<int64_t>, int64_t> uses;
  for (size_t i = 0; i < count; ++i) {
    if (const auto* prompt = shared_prompt(i)) ++uses[*prompt];
  }
  std::vector<std::pair<size_t, std::unique_ptr<SequenceRun>>> active;
  size_t next = 0;
  while (next < count || !active.empty()) {
    if (interrupt) interrupt();
    // Refill: a new sequence's prefill is a pass of its own (its many rows would not be
    // cheaper together, and a solo prefill is what its solo run computes), run once for
    // every sequence of the same prompt (Prefill).
    while (static_cast<int64_t>(active.size()) < max_batch && next < count) {
      std::unique_ptr<SequenceRun> seq = make(next);
      const auto* prompt = shared_prompt(next);
      if (prompt == nullptr) {
        seq->prefill(nullptr, nullptr);
      } else {
        // Kept while a later sequence of the batch may still start from it.
        auto& kept = prefills[*prompt];
        const bool again = --uses[*prompt] > 0;
        seq->prefill(kept.get(), kept == nullptr && again ? &kept : nullptr);
        if (!again) prefills.erase(*prompt);
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
    std::vector<SequenceRun*> fed_seqs;
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
      auto outs = model.forward_batch(caches, inputs, capture);
      for (size_t k = 0; k < outs.size(); ++k) fed_seqs[k]->after_pass(std::move(outs[k]));
    }
    std::vector<std::pair<size_t, std::unique_ptr<SequenceRun>>> still;
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

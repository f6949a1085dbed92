#include "attnvar/generate/generator.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>

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

}  // namespace

GenerationResult generate(const LlamaModel& model, const std::vector<int64_t>& prompt,
                          const GenerateOptions& o, const InterruptCheck& interrupt,
                          const PassSink& sink) {
  const ModelConfig& cfg = model.config();
  validate(o, cfg.vocab_size);
  if (prompt.empty()) throw ConfigError("generate: the prompt is empty (no tokens)");
  for (int64_t id : prompt) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw ConfigError(fmt::format("generate: prompt token {} is outside the vocabulary", id));
    }
  }
  const std::vector<int64_t> eos = o.eos_ids.empty() ? cfg.eos_token_ids : o.eos_ids;
  auto is_eos = [&](int64_t id) { return std::find(eos.begin(), eos.end(), id) != eos.end(); };
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);

  GenerationResult r;
  r.tree.prompt = prompt;
  const int64_t P = static_cast<int64_t>(prompt.size());
  auto cache = model.new_cache(P + std::min<int64_t>(o.max_steps * 4, 4096) + 1);
  auto emit = [&](PassCapture&& pc) {
    if (!o.capture.enabled) return;
    if (sink) {
      sink(std::move(pc));
    } else {
      r.passes.push_back(std::move(pc));
    }
  };
  auto dbl = at::TensorOptions().dtype(at::kDouble);
  auto t0 = std::chrono::steady_clock::now();
  PassInput prefill{at::tensor(prompt, at::TensorOptions().dtype(at::kLong)),
                    at::arange(0, P, dbl), causal_visibility(P, 0)};
  for (int64_t i = 0; i < P; ++i) {
    prefill.slots.push_back(SlotInfo{static_cast<double>(i), -1, 0, prompt[i]});
    r.slots.push_back(SlotRecord{prompt[i], static_cast<double>(i), -1, -1});
  }
  prefill.last_logits_only = true;
  auto out = model.forward(cache, prefill, o.capture);
  emit(PassCapture{-1, 0, P, std::move(out.captures)});
  at::Tensor q = at::softmax(out.logits[0] / o.temperature, -1);  // q_0
  r.prefill_seconds = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();

  std::vector<at::Tensor> kept;
  r.stop_reason = "max_steps";
  const SelectionOptions sel{o.threshold, o.max_width, o.sample};
  for (int64_t t = 0; t < o.max_steps; ++t) {
    if (interrupt) interrupt();
    if (o.keep_distributions) kept.push_back(q);
    TreeStep step;
    step.entropy = entropy_nats(q);
    std::vector<int64_t> fed_ids;
    std::vector<double> fed_probs;
    std::vector<SlotInfo> fed_slots;
    for (const auto& s : select_set(t < o.min_new_steps ? without_eos(q, eos) : q, sel, gen)) {
      Member m;
      m.token_id = s.token_id;
      m.probability = s.probability;
      m.rank = static_cast<int64_t>(step.members.size());
      m.is_eos = is_eos(s.token_id);
      if (!m.is_eos) {
        m.slot = cache.size() + static_cast<int64_t>(fed_ids.size());
        fed_ids.push_back(m.token_id);
        fed_probs.push_back(m.probability);
        fed_slots.push_back(SlotInfo{static_cast<double>(P + t), t, m.rank, m.token_id});
        r.slots.push_back(SlotRecord{m.token_id, static_cast<double>(P + t), t,
                                     static_cast<int64_t>(step.members.size())});
      }
      step.members.push_back(m);
    }
    const bool stop = o.stop_on == StopOn::kAnyEos
                          ? std::any_of(step.members.begin(), step.members.end(),
                                        [](const Member& m) { return m.is_eos; })
                          : step.members.front().is_eos;
    r.tree.steps.push_back(std::move(step));
    if (!fed_ids.empty()) {
      const int64_t k = static_cast<int64_t>(fed_ids.size());
      PassInput in{at::tensor(fed_ids, at::TensorOptions().dtype(at::kLong)),
                   at::full({k}, static_cast<double>(P + t), dbl),
                   set_visibility(k, cache.size(), o.mode), std::move(fed_slots)};
      // The last set is fed for its slots and capture only: no q_{t+1} after it.
      const bool last = stop || t + 1 == o.max_steps;
      in.no_logits = last;
      const int64_t first = cache.size();
      auto pass = model.forward(cache, in, o.capture);
      emit(PassCapture{t, first, k, std::move(pass.captures)});
      if (!last) q = next_distribution(pass.logits, fed_probs, o.policy, o.temperature);
    }
    if (stop || fed_ids.empty()) {
      r.stop_reason = "eos";
      break;
    }
  }
  if (o.keep_distributions && !kept.empty()) r.distributions = at::stack(kept).cpu();
  r.generate_seconds = seconds_since(t0);
  return r;
}

}  // namespace attnvar

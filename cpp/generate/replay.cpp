#include "attnvar/generate/replay.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "attnvar/error.h"

namespace attnvar {
namespace {

// Pass boundaries: prompt slots split freely (causal), steps never split (siblings may
// see each other in either direction).
std::vector<int64_t> chunk_bounds(const Layout& layout, int64_t P, int64_t chunk) {
  const int64_t N = layout.size();
  std::vector<int64_t> bounds = {0};
  if (chunk <= 0) {
    bounds.push_back(N);
    return bounds;
  }
  for (int64_t b = chunk; b < P; b += chunk) bounds.push_back(b);
  for (size_t t = 0; t + 1 < layout.step_begin.size(); ++t) {
    const int64_t begin = layout.step_begin[t], end = layout.step_begin[t + 1];
    if (end - bounds.back() > chunk && begin > bounds.back()) bounds.push_back(begin);
  }
  if (bounds.back() != N) bounds.push_back(N);
  return bounds;
}

}  // namespace

ReplayResult replay(const LlamaModel& model, const Tree& tree, const ReplayOptions& o) {
  const ModelConfig& cfg = model.config();
  if (!(o.temperature > 0.0)) throw ConfigError("replay: temperature must be positive");
  for (int64_t id : tree.prompt) {
    if (id < 0 || id >= cfg.vocab_size) {
      throw ConfigError(fmt::format("replay: prompt token {} is outside the vocabulary", id));
    }
  }
  for (const auto& step : tree.steps) {
    for (const auto& m : step.members) {
      if (m.token_id < 0 || m.token_id >= cfg.vocab_size) {
        throw ConfigError(fmt::format("replay: member token {} is outside the vocabulary",
                                      m.token_id));
      }
    }
  }
  ReplayResult r;
  r.layout = encode(tree, o.encoding);
  const Layout& lay = r.layout;
  const int64_t N = lay.size(), P = tree.prompt_length();
  const std::vector<HookEdit> edits = model.prepare_edits(o.edits, N);
  auto ids = lay.token_ids();
  auto positions = lay.positions();
  auto cache = model.new_cache(N);
  std::vector<at::Tensor> logits;
  auto bounds = chunk_bounds(lay, P, o.chunk_size);
  for (size_t c = 0; c + 1 < bounds.size(); ++c) {
    const int64_t b = bounds[c], e = bounds[c + 1], T = e - b;
    PassInput in{ids.narrow(0, b, T), positions.narrow(0, b, T),
                 lay.visibility.narrow(0, b, T).narrow(1, 0, e)};
    in.no_logits = !o.logits;
    in.edits = edits;
    in.callbacks = o.callbacks;
    in.edits_prepared = true;
    for (int64_t i = b; i < e; ++i) {
      const auto& s = lay.slots[i];
      const int64_t rank = s.step >= 0 ? tree.steps[s.step].members[s.member].rank : 0;
      in.slots.push_back(SlotInfo{s.position, s.step, rank, s.token_id});
    }
    for (const auto& iv : o.interventions) {
      for (int64_t k : iv.key_slots) {
        if (k < 0 || k >= N) {
          throw ConfigError(fmt::format("replay: intervention key slot {} outside [0, {})", k, N));
        }
      }
      KeyBias local = iv;
      local.key_slots.clear();
      for (int64_t k : iv.key_slots) {
        if (k < e) local.key_slots.push_back(k);  // keys that exist by this pass
      }
      if (!local.key_slots.empty()) in.interventions.push_back(std::move(local));
    }
    auto out = model.forward(cache, in, o.capture);
    if (o.logits) logits.push_back(out.logits);
    if (o.capture.records()) {
      r.passes.push_back(
          PassCapture{lay.slots[b].step, b, T, std::move(out.captures), std::move(out.hooks)});
    }
  }
  if (!o.logits) return r;
  r.logits = at::cat(logits);

  // q_0 from the last prompt slot; q_{t+1} from step t's fed members.
  std::vector<at::Tensor> dists = {at::softmax(r.logits[P - 1] / o.temperature, -1)};
  for (int64_t t = 0; t + 1 < tree.num_steps(); ++t) {
    const int64_t b = lay.step_begin[t], e = lay.step_begin[t + 1];
    if (e == b) break;
    std::vector<double> weights;
    for (int64_t i = b; i < e; ++i) {
      const double p = tree.steps[t].members[lay.slots[i].member].probability;
      weights.push_back(std::isnan(p) ? 1.0 : p);
    }
    dists.push_back(next_distribution(r.logits.narrow(0, b, e - b), weights, o.policy,
                                      o.temperature));
  }
  // Results live on the host whatever the model's device (no-ops on CPU).
  r.distributions = at::stack(dists).cpu();
  r.logits = r.logits.cpu();
  return r;
}

}  // namespace attnvar

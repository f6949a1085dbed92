#include "attnvar/generate/replay.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>

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

// The checks replay() makes before any pass (ConfigError naming the problem).
void check_replay(const ModelConfig& cfg, const Tree& tree, const ReplayOptions& o) {
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
}

// The pass over slots [b, e) of a replay's layout: its ids, positions and visibility,
// its slots' metadata, and the interventions whose keys exist by then.
PassInput replay_pass(const Tree& tree, const Layout& lay, const ReplayOptions& o,
                      const std::vector<HookEdit>& edits, const at::Tensor& ids,
                      const at::Tensor& positions, int64_t b, int64_t e) {
  const int64_t N = lay.size(), T = e - b;
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
  return in;
}

// The logits of every pass, and from them the next-step distributions, into r.
void finish_logits(ReplayResult& r, const Tree& tree, const ReplayOptions& o,
                   const std::vector<at::Tensor>& logits) {
  const Layout& lay = r.layout;
  const int64_t P = tree.prompt_length();
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
}

}  // namespace

ReplayResult replay(const LlamaModel& model, const Tree& tree, const ReplayOptions& o) {
  check_replay(model.config(), tree, o);
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
    const int64_t b = bounds[c], e = bounds[c + 1];
    auto out = model.forward(cache, replay_pass(tree, lay, o, edits, ids, positions, b, e),
                             o.capture);
    if (o.logits) logits.push_back(out.logits);
    if (o.capture.records()) {
      r.passes.push_back(
          PassCapture{lay.slots[b].step, b, e - b, std::move(out.captures), std::move(out.hooks)});
    }
  }
  if (o.logits) finish_logits(r, tree, o, logits);
  return r;
}

std::vector<ReplayResult> replay_batch(const LlamaModel& model, const std::vector<Tree>& trees,
                                       const std::vector<ReplayOptions>& options,
                                       int64_t max_batch) {
  if (trees.size() != options.size()) {
    throw ConfigError(fmt::format("replay_batch: {} trees for {} option sets", trees.size(),
                                  options.size()));
  }
  if (max_batch < 1) throw ConfigError("replay_batch: max_batch must be at least 1");
  // Everything is checked and laid out before any pass runs.
  const size_t n = trees.size();
  std::vector<ReplayResult> results(n);
  std::vector<PassInput> inputs(n);
  std::vector<size_t> together;  // one pass each, run in batches; the others alone
  for (size_t i = 0; i < n; ++i) {
    const ReplayOptions& o = options[i];
    if (!(o.capture == options.front().capture)) {
      throw ConfigError(fmt::format("replay_batch: option set {} captures other than set 0 "
                                    "(one capture for the whole batch)", i));
    }
    check_replay(model.config(), trees[i], o);
    const Layout& lay = results[i].layout = encode(trees[i], o.encoding);
    const int64_t N = lay.size();
    const auto edits = model.prepare_edits(o.edits, N);
    inputs[i] = replay_pass(trees[i], lay, o, edits, lay.token_ids(), lay.positions(), 0, N);
    if (N > 0 && chunk_bounds(lay, trees[i].prompt_length(), o.chunk_size).size() == 2) {
      together.push_back(i);
    }
  }
  for (size_t i = 0, k = 0; i < n; ++i) {
    if (k < together.size() && together[k] == i) {
      ++k;
    } else {
      results[i] = replay(model, trees[i], options[i]);
    }
  }
  for (size_t g = 0; g < together.size(); g += static_cast<size_t>(max_batch)) {
    const size_t end = std::min(together.size(), g + static_cast<size_t>(max_batch));
    std::vector<KVCache> caches;
    caches.reserve(end - g);
    std::vector<KVCache*> cache_ptrs;
    std::vector<PassInput> group;
    for (size_t k = g; k < end; ++k) {
      const size_t i = together[k];
      caches.push_back(model.new_cache(results[i].layout.size()));
      cache_ptrs.push_back(&caches.back());
      group.push_back(std::move(inputs[i]));
    }
    auto outs = model.forward_batch(cache_ptrs, group, options.front().capture);
    for (size_t k = g; k < end; ++k) {
      const size_t i = together[k];
      ReplayResult& r = results[i];
      ForwardOutput& out = outs[k - g];
      if (options[i].capture.records()) {
        r.passes.push_back(PassCapture{r.layout.slots[0].step, 0, r.layout.size(),
                                       std::move(out.captures), std::move(out.hooks)});
      }
      if (options[i].logits) finish_logits(r, trees[i], options[i], {out.logits});
    }
  }
  return results;
}

}  // namespace attnvar

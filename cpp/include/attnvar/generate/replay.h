// Counterfactual replay: a tree (generated or built by hand) teacher-forced under any
// encoding, in one pass or in chunks of whole steps, with capture and interventions.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "attnvar/capture/capture_spec.h"
#include "attnvar/capture/pass_capture.h"
#include "attnvar/generate/encoding.h"
#include "attnvar/generate/next_step.h"
#include "attnvar/generate/tree.h"
#include "attnvar/model/llama.h"

namespace attnvar {

struct ReplayOptions {
  Encoding encoding = Encoding::kSharedIsolated;
  CaptureSpec capture;
  std::vector<KeyBias> interventions;  // key slots in the replay layout's slot space
  int64_t chunk_size = 0;  // max queries per pass (whole steps kept together); 0: one pass
  NextStepPolicy policy = NextStepPolicy::kMixture;  // for the next-step distributions
  double temperature = 1.0;
  // false: no output projection at all — ReplayResult::logits and ::distributions stay
  // undefined (what a study's replays, which only need their captures, ask for).
  bool logits = true;
  // Interventions at hook points (slots in the replay layout's slot space) and functions
  // called at hook points (not owned).
  std::vector<HookEdit> edits;
  const std::map<std::string, HookCallback>* callbacks = nullptr;
};

struct ReplayResult {
  Layout layout;
  std::vector<PassCapture> passes;
  at::Tensor logits;         // (N, V) f32, one row per slot
  at::Tensor distributions;  // (num_steps, V) f32: q_t as generation would have computed it
};

// q_0 comes from the last prompt slot; q_{t+1} from step t's fed members by the policy
// (members of a hand-built tree have no selection probability: mixture weights them
// equally). A step with no fed member ends the distributions.
ReplayResult replay(const LlamaModel& model, const Tree& tree, const ReplayOptions& options);

// Several replays, up to max_batch of them in one forward pass (LlamaModel::forward_batch:
// every weight read, and a quantized one decoded, once for all their rows). Each result is
// bit for bit replay() of that tree alone. A replay in chunks (chunk_size smaller than its
// tree) runs alone. Every option set must capture the same (one CaptureSpec per pass);
// everything is checked before any pass runs (ConfigError naming the problem).
std::vector<ReplayResult> replay_batch(const LlamaModel& model, const std::vector<Tree>& trees,
                                       const std::vector<ReplayOptions>& options,
                                       int64_t max_batch = 8);

}  // namespace attnvar

// Parallel generation done as described (docs/generation.md, "Generation"): every non-EOS
// member of S_t is fed in ONE forward pass, all at logical position P + t, each in its own
// slot, with sibling visibility per mode; q_{t+1} comes from the fed members by a next-step
// policy.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "attnvar/capture/capture_spec.h"
#include "attnvar/capture/pass_capture.h"
#include "attnvar/generate/next_step.h"
#include "attnvar/generate/tree.h"
#include "attnvar/model/llama.h"
#include "attnvar/model/visibility.h"

namespace attnvar {

enum class StopOn {
  kAnyEos,  // stop once any member of a set is EOS (as the reference does)
  kTopEos,  // stop once the rank-0 member is EOS
};
StopOn stop_on_from_string(const std::string& name);

struct GenerateOptions {
  double threshold = 0.1;  // θ ∈ (0, 1]
  int64_t max_steps = 30;  // ≥ 0 sets
  SiblingVisibility mode = SiblingVisibility::kIsolated;
  NextStepPolicy policy = NextStepPolicy::kMixture;
  int64_t max_width = 32;
  double temperature = 1.0;  // > 0; scales logits before every softmax
  bool sample = false;       // seeded stochastic selection
  uint64_t seed = 0;
  StopOn stop_on = StopOn::kAnyEos;
  std::vector<int64_t> eos_ids;  // empty: the model config's eos ids
  // Steps t < min_new_steps select from q_t with every EOS id's probability set to 0 and
  // the rest renormalised (unless q_t has no other mass), so no run ends before it has
  // min_new_steps sets; q_t itself (keep_distributions, replay) is left as computed.
  int64_t min_new_steps = 0;  // ≥ 0
  CaptureSpec capture;
  bool keep_distributions = false;  // keep every q_t (steps, V)
  // Interventions at hook points in every pass (slots in the run's slot space: the prompt's
  // 0..P-1, then the fed members in order), and functions called at hook points (the slow
  // path; not owned, must outlive the call).
  std::vector<HookEdit> edits;
  const std::map<std::string, HookCallback>* callbacks = nullptr;
};

// Throws ConfigError naming the offending option.
void validate(const GenerateOptions& options, int64_t vocab_size);

struct GenerationResult {
  Tree tree;
  std::vector<SlotRecord> slots;     // every fed token, in slot order
  std::vector<PassCapture> passes;   // prefill, then one per fed set (when capturing)
  at::Tensor distributions;          // (steps, V) f32: q_t, if keep_distributions
  std::string stop_reason;           // "max_steps" | "eos"
  // [N, N] bool: the mask each slot's query was given (filled by generate_tempo2025; empty
  // for generate()).
  at::Tensor visibility;
  double prefill_seconds = 0.0;
  double generate_seconds = 0.0;
};

// Called between passes; may throw to stop (the Python binding raises KeyboardInterrupt
// there). The model is left usable: each run has its own cache.
using InterruptCheck = std::function<void()>;
// Called after each pass with its capture when streaming; the result then keeps none.
using PassSink = std::function<void(PassCapture&&)>;

GenerationResult generate(const LlamaModel& model, const std::vector<int64_t>& prompt,
                          const GenerateOptions& options, const InterruptCheck& interrupt = {},
                          const PassSink& sink = {});

// Several generations at once: up to max_batch sequences are active; each step, every
// active sequence selects its set and all sets go through one forward_batch() pass (each
// weight read once for all their rows); a sequence that stops leaves and the next prompt
// takes its place (its prefill runs alone). results[i] is bit for bit generate(model,
// prompts[i], options[i]) — tree, slots, captures, distributions — whatever the batch.
// Every option set must have the same capture spec. Captures are kept in the results
// (no streaming). Throws ConfigError for mismatched lengths, max_batch < 1, or what
// generate() would throw for any sequence (before any pass runs).
std::vector<GenerationResult> generate_batch(const LlamaModel& model,
                                             const std::vector<std::vector<int64_t>>& prompts,
                                             const std::vector<GenerateOptions>& options,
                                             int64_t max_batch = 8,
                                             const InterruptCheck& interrupt = {});

}  // namespace attnvar

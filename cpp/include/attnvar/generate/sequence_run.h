// Internal to the generators (generate, generate_tempo2025 and their batch forms): one
// generation as a sequence of passes, and the two drivers that run it, alone or with others.
// A generator writes its bookkeeping once, as a SequenceRun; run_alone() and run_batch() call
// the same steps in the same order, so a sequence's result never depends on its company.
// Not part of the public API (attnvar.h does not include it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attnvar/capture/capture_spec.h"
#include "attnvar/generate/generator.h"
#include "attnvar/model/kv_cache.h"
#include "attnvar/model/llama.h"

namespace attnvar {

// A prompt's prefill pass, kept to start other sequences of the same prompt in a batch: when
// the prefill depends only on the tokens, the model and the capture spec (which a batch
// shares), copying its output and cache rows gives each sequence exactly what its own pass
// would.
struct Prefill {
  ForwardOutput out;
  KVCache cache;  // the prompt's slots only
};

// A deep copy: each run owns its captured tensors.
ForwardOutput copy_of(const ForwardOutput& out);

// A sequence's prefill: with `from`, its output and first `prompt_length` cache rows copied
// into `cache` (the pass is not run); otherwise run() (which appends to `cache`), and, with
// `keep`, the result also kept there for later sequences.
ForwardOutput shared_prefill(const LlamaModel& model, KVCache& cache, int64_t prompt_length,
                             const Prefill* from, std::shared_ptr<const Prefill>* keep,
                             const std::function<ForwardOutput()>& run);

// One generation, pass by pass. The drivers call, in this order: prefill() once; then while
// !done(): select() — which either fills the sequence's next pass and returns true, or
// returns false (nothing to feed) — then after_pass() with that pass's output when select()
// returned true, then end_step(); finally finish().
class SequenceRun {
 public:
  virtual ~SequenceRun() = default;
  // The prompt's pass (see shared_prefill for `from` and `keep`).
  virtual void prefill(const Prefill* from, std::shared_ptr<const Prefill>* keep) = 0;
  virtual bool select(PassInput* in) = 0;
  virtual void after_pass(ForwardOutput&& out) = 0;
  virtual void end_step(bool fed) = 0;
  virtual bool done() const = 0;
  virtual KVCache* cache() = 0;
  virtual GenerationResult finish() = 0;
};

// The sequence alone: every pass through forward(); `interrupt` before each pass after the
// prefill.
GenerationResult run_alone(const LlamaModel& model, SequenceRun& seq, const CaptureSpec& capture,
                           const InterruptCheck& interrupt);

// What every batch function checks first (ConfigError, `what` naming the function): one option
// set per prompt, max_batch ≥ 1, and one capture spec for all (one pass computes them
// together); capture_of(i): sequence i's.
void check_batch(const std::string& what, size_t num_prompts, size_t num_options,
                 int64_t max_batch, const std::function<const CaptureSpec&(size_t)>& capture_of);

// `count` sequences, up to max_batch (≥ 1) active at once: each round, every active sequence
// selects and all their passes go through one forward_batch(); a sequence that is done
// leaves and make(next) takes its place (its prefill a pass of its own). shared_prompt(i):
// the prompt whose prefill sequence i may share with others of the same prompt, or null
// when its prefill must be its own pass. Every sequence must capture `capture`.
std::vector<GenerationResult> run_batch(
    const LlamaModel& model, size_t count,
    const std::function<std::unique_ptr<SequenceRun>(size_t)>& make,
    const std::function<const std::vector<int64_t>*(size_t)>& shared_prompt,
    const CaptureSpec& capture, int64_t max_batch, const InterruptCheck& interrupt);

}  // namespace attnvar

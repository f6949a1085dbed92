// Compat preset `tempo-2025`: the public prototype's behaviour, reproduced exactly so its
// numbers can be explained (docs/generation.md, "Compat preset `tempo-2025`"). It is NOT
// the mechanism: no position is ever shared and only one member per set enters the model.
//
// Bookkeeping:
//  - the prompt (BOS included by the caller) is prefilled at slots 0..P−1 (causal);
//  - slot P holds the last prompt token again, at position P; its logits give S_0;
//  - the last (lowest-probability) member of S_t is fed at step t+1, in slot P+1+t at
//    position P+1+t; its logits give S_{t+1}; other members never get a slot;
//  - the final set is never fed; generation stops when any member is EOS;
//  - selection: softmax of raw logits, p ≥ θ inclusive, sorted descending, argmax if
//    none, no width cap;
//  - emulate_isolation_bug: the additive mask is built in printed-sequence index space
//    (causal, plus −∞ between different members of one recorded parallel set) and the row
//    at the current *cache* index is applied to the query. Rows or columns beyond the
//    printed sequence are causal.
//  - stale-mask leak (several prompts in one process): every earlier isolated-mode run of the
//    process left its last additive mask M_j ([S_j, S_j] over printed indices, see
//    tempo_leak_mask) in a wrapper that stays in the attention chain. Each later forward pass
//    (prefill included, either mode) takes row r = clamp(c, 0, S_j − 1) of every kept M_j,
//    c being the cache slot of the pass's first query, and ANDs it into the visibility of
//    every query of the pass over keys 0 … min(S_j, keys) − 1; keys ≥ S_j are untouched.
//    A prefill (c = 0) thus sees only key 0 among keys < S_j. Visible-mode runs leave none.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "attnvar/capture/capture_spec.h"
#include "attnvar/generate/generator.h"

namespace attnvar {

struct TempoOptions {
  double threshold = 0.15;
  int64_t max_steps = 30;
  bool emulate_isolation_bug = false;
  // Ids that stop generation when any member of a set is one of them. nullopt: the model
  // config's eos ids; an empty list: never stop on EOS (the prototype stops only on its
  // tokenizer's eos id, which an HF directory may lack or set differently).
  std::optional<std::vector<int64_t>> eos_ids;
  // Masks left by earlier isolated-mode runs of the same emulated process, oldest first
  // (tempo_leak_mask of each); each is a non-empty square 2-D bool tensor (true = visible),
  // else ConfigError. Empty: the run starts clean, as in a fresh process.
  std::vector<at::Tensor> leaked_masks;
  CaptureSpec capture;
};

// Printed-sequence index of S_t's first member: L_t = P + Σ_{u<t} k_u.
std::vector<int64_t> printed_set_starts(const Tree& tree);

// Visibility row of the query at cache slot `query_slot` over slots [0, query_slot] under
// the emulated isolation bug, given the sets chosen so far.
at::Tensor tempo_bug_visibility(const Tree& tree, int64_t query_slot);

// The mask a finished isolated-mode run leaves behind: the one of its last forward pass (the
// pass that fed the last member of S_{T−2}, or the duplicate prompt token at slot P when
// T ≤ 1), built before the final set was chosen. [S, S] bool (true = visible) with
// S = P + Σ_{u<T−1} k_u: causal, and false between different members of one recorded set
// S_0 … S_{T−2}, in printed-index space. T ≤ 1 gives plain causal [P, P]. ConfigError for
// a tree without a prompt.
at::Tensor tempo_leak_mask(const Tree& tree);

GenerationResult generate_tempo2025(const LlamaModel& model, const std::vector<int64_t>& prompt,
                                    const TempoOptions& options,
                                    const InterruptCheck& interrupt = {});

// Several compat runs at once: up to max_batch sequences are active; each round, every
// active sequence's next one-token pass goes through one forward_batch() pass (each weight
// read once for all of them); a run that stops leaves and the next takes its place. Runs of
// the same prompt share its prefill pass (it depends on the prompt and the capture only).
// results[i] is bit for bit generate_tempo2025(model, prompts[i], options[i]) — tree, slots,
// captures, visibility — whatever the batch. Every option set must have the same capture
// spec, and none may have leaked_masks: under the stale-mask leak each run depends on the
// runs before it, so those runs go one after another through generate_tempo2025. Throws
// ConfigError for those, mismatched lengths, max_batch < 1, or what generate_tempo2025 would
// throw for any sequence (before any pass runs).
std::vector<GenerationResult> generate_tempo2025_batch(
    const LlamaModel& model, const std::vector<std::vector<int64_t>>& prompts,
    const std::vector<TempoOptions>& options, int64_t max_batch = 8,
    const InterruptCheck& interrupt = {});

}  // namespace attnvar

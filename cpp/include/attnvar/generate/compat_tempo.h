// Compat preset `tempo-2025`: the public prototype's behaviour, reproduced exactly so its
// numbers can be explained (TEMPO_REFERENCE.md). It is NOT the mechanism: no position is
// ever shared and only one member per set enters the model.
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
  CaptureSpec capture;
};

// Printed-sequence index of S_t's first member: L_t = P + Σ_{u<t} k_u.
std::vector<int64_t> printed_set_starts(const Tree& tree);

// Visibility row of the query at cache slot `query_slot` over slots [0, query_slot] under
// the emulated isolation bug, given the sets chosen so far.
at::Tensor tempo_bug_visibility(const Tree& tree, int64_t query_slot);

GenerationResult generate_tempo2025(const LlamaModel& model, const std::vector<int64_t>& prompt,
                                    const TempoOptions& options,
                                    const InterruptCheck& interrupt = {});

}  // namespace attnvar

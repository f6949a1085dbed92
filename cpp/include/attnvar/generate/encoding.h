// Encodings: how a tree is laid out for the model — a logical position and a visibility
// row per slot (docs/generation.md, "Trees and encodings"). Holding the tree fixed while
// changing the encoding is the core research design.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "attnvar/generate/tree.h"
#include "attnvar/model/visibility.h"

namespace attnvar {

enum class Encoding {
  kSharedIsolated,  // position P + t, siblings see themselves only (generation `isolated`)
  kSharedVisible,   // position P + t, all siblings visible (generation `visible`)
  kSharedCausal,    // position P + t, lower ranks visible (generation `causal`)
  kSerial,          // each fed member its own position, causal, like ordinary text
  kFractional,      // position P + t + r / k_t, siblings see themselves only
  kTopOnly,         // rank 0 only: a plain sequence
};

Encoding encoding_from_string(const std::string& name);
std::string to_string(Encoding encoding);
// The shared_* encoding a generation mode produces.
Encoding encoding_for_mode(SiblingVisibility mode);

// A tree laid out under an encoding. Slots: the prompt, then each step's fed members
// (non-EOS; rank 0 only for top_only) in rank order.
struct Layout {
  Encoding encoding = Encoding::kSharedIsolated;
  std::vector<SlotRecord> slots;
  at::Tensor visibility;  // (N, N) bool: slot i may attend slot j
  // step_begin[t]..step_begin[t+1]: the slots of step t (size num_steps + 1).
  std::vector<int64_t> step_begin;

  int64_t size() const { return static_cast<int64_t>(slots.size()); }
  at::Tensor positions() const;  // (N,) f64
  at::Tensor token_ids() const;  // (N,) int64
};

// Counting k_t as the fed members of step t, serial positions are
// P + t + r + Σ_{u<t}(k_u − 1) and fractional ones P + t + r / k_t.
Layout encode(const Tree& tree, Encoding encoding);

}  // namespace attnvar

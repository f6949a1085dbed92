// Visibility: which slots a query may attend to, as a boolean matrix over one forward
// pass. Row i is the pass's i-th new token; column j is slot j of the cache after the
// pass (S = S_prev + T). The engine turns it into an additive bias of 0 / −inf.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace attnvar {

// How the members of one parallel set see each other (docs/generation.md, "Generation", step 3).
enum class SiblingVisibility {
  kIsolated,  // each member sees itself only
  kVisible,   // all siblings (one shared position, no order among them)
  kCausal,    // siblings of lower rank (a plain causal mask fed one by one)
};

// (T, S_prev + T) bool: every earlier slot, causal among the T new tokens. Prefill and
// ordinary decoding.
at::Tensor causal_visibility(int64_t num_new, int64_t num_prev);

// (k, S_prev + k) bool: every earlier slot, and siblings per `mode`. Members are in rank
// order (rank 0 first).
at::Tensor set_visibility(int64_t num_members, int64_t num_prev, SiblingVisibility mode);

// Parses "isolated" | "visible" | "causal"; ConfigError otherwise.
SiblingVisibility sibling_visibility_from_string(const std::string& name);

}  // namespace attnvar

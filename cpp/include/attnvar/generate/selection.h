// Choosing the set S_t from the next-token distribution q_t (docs/generation.md,
// "Generation", step 2).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace attnvar {

struct SelectionOptions {
  double threshold = 0.1;  // θ ∈ (0, 1]; 1 is greedy decoding
  int64_t max_width = 32;  // at most this many members
  bool sample = false;     // one token drawn from q_t joins the set
};

struct Selected {
  int64_t token_id;
  double probability;
};

// q: (V,) probabilities. Returns { v : q(v) ≥ θ } sorted by q descending, ties by token id
// ascending, capped at max_width; the argmax alone if empty. With sample, a token drawn
// from q with `generator` joins the set if absent (keeping the probability order); if
// that would exceed max_width, the least probable thresholded member makes room.
std::vector<Selected> select_set(const at::Tensor& q, const SelectionOptions& options,
                                 at::Generator generator = {});

// Checks θ ∈ (0, 1] and max_width ≥ 1; ConfigError naming the option otherwise.
void validate(const SelectionOptions& options);

}  // namespace attnvar

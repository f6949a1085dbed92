// How q_{t+1} comes from the fed members' outputs (docs/generation.md, "Generation", step 4).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace attnvar {

enum class NextStepPolicy {
  kMixture,     // Σ_i w_i softmax(l_i / τ), w_i ∝ selection probability (renormalised)
  kTop,         // the rank-0 fed member's distribution
  kLast,        // the last fed member's distribution
  kMeanLogits,  // softmax(mean_i l_i / τ)
};

NextStepPolicy next_step_policy_from_string(const std::string& name);
std::string to_string(NextStepPolicy policy);

// Entropy of a distribution q (V,) in nats (q_t's entropy is recorded per step).
double entropy_nats(const at::Tensor& q);

// member_logits: (k, V) f32, fed members in rank order; weights: their selection
// probabilities (k). Returns q_{t+1}: (V,) f32.
at::Tensor next_distribution(const at::Tensor& member_logits, const std::vector<double>& weights,
                             NextStepPolicy policy, double temperature);

}  // namespace attnvar

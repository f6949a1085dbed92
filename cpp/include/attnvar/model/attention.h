// Multi-head (grouped-query) self-attention of one decoder layer over the KV cache, with
// an explicit additive bias and optional capture of what every head attended to.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "attnvar/capture/capture_spec.h"
#include "attnvar/model/config.h"
#include "attnvar/model/hook_edit.h"
#include "attnvar/model/kv_cache.h"
#include "attnvar/model/linear.h"
#include "attnvar/model/rope.h"

namespace attnvar {

struct AttentionWeights {
  Linear q_proj;  // (num_heads * head_dim, hidden)
  Linear k_proj;  // (num_kv_heads * head_dim, hidden)
  Linear v_proj;  // (num_kv_heads * head_dim, hidden)
  Linear o_proj;  // (hidden, num_heads * head_dim)
  at::Tensor q_bias, k_bias, v_bias, o_bias;  // undefined when the family has none
  // Qwen3: (head_dim,) per head; OLMo 2: (num_heads·head_dim,) / (num_kv_heads·head_dim,)
  // over the whole projection; undefined otherwise.
  at::Tensor q_norm, k_norm;
};

// What one layer recorded for one pass. H' = captured heads, T = the pass's queries,
// S = slots after the pass. Masked entries: 0 in probabilities, −inf in scores.
struct LayerCapture {
  int64_t layer = 0;
  at::Tensor probabilities;  // (H', T, S)
  at::Tensor scores;         // (H', T, S), what enters the softmax: soft-capped, then biased
  at::Tensor value_norms;    // (H', S): ‖v_k W_O^h‖
};

class Attention {
 public:
  // Concatenates q, k, v (and their biases) into one weight, one projection per pass;
  // weights().q_proj, k_proj, v_proj (and biases) become views of it.
  Attention(const ModelConfig& config, AttentionWeights weights, int64_t layer);

  // x: (T, hidden), the normalised input of the pass's T new tokens; angles: the
  // rope tables of their logical positions.
  // bias: (T, S) or (1|H, T, S) f32 additive, S = cache.size() + T; undefined when every
  // slot is visible to every query.
  // Writes this layer's k, v for the new tokens into the cache's pending slots.
  // Returns (T, hidden). When spec captures this layer, fills *capture. At the attention's
  // hook points (q, k, v, rot_q, rot_k, z) `hooks` edits and records.
  at::Tensor forward(const at::Tensor& x, const Rope& rope, const RopeAngles& angles, KVCache& cache,
                     const at::Tensor& bias, const CaptureSpec& spec,
                     std::optional<LayerCapture>* capture, const HookContext& hooks = {}) const;

  // The same for several independent sequences in one call: x holds their rows one after
  // another (counts `rows`); sequence i has its own angles, cache, bias and capture slot.
  // The projections read each weight once for all of them (project_segments); each row's
  // result is bit for bit forward() of its own sequence.
  at::Tensor forward_segments(const at::Tensor& x, const std::vector<int64_t>& rows,
                              const Rope& rope, const std::vector<RopeAngles>& angles,
                              const std::vector<KVCache*>& caches,
                              const std::vector<at::Tensor>& biases, const CaptureSpec& spec,
                              std::vector<std::optional<LayerCapture>>* captures,
                              const std::vector<HookContext>& hooks = {}) const;

  const AttentionWeights& weights() const { return w_; }

 private:
  // Everything between the two projections, given qkv (T, (H + 2 Hkv) * D): q/k norms,
  // RoPE, the cache write, attention (fused, or explicit with capture); returns the heads'
  // outputs merged, (T, H * D). Fills *capture except value_norms, which run on all threads.
  at::Tensor attend(const at::Tensor& qkv, const Rope& rope, const RopeAngles& angles,
                    KVCache& cache, const at::Tensor& bias, const CaptureSpec& spec,
                    std::optional<LayerCapture>* capture, const HookContext& hooks) const;
  // ‖W_O^h v_k‖ of every query head h and slot k: (H, S), given values (Hkv, S, D).
  at::Tensor value_norms(const at::Tensor& values) const;

  int64_t layer_;
  int64_t num_heads_;
  int64_t num_kv_heads_;
  int64_t head_dim_;
  double rms_norm_eps_;
  double scale_;                   // q·k factor (ModelConfig::attention_scale)
  std::optional<double> softcap_;  // Gemma 2's attention logit soft-capping
  AttentionWeights w_;
  Linear qkv_proj_;      // (q_dim + 2 * kv_dim, hidden): q rows, then k, then v
  at::Tensor qkv_bias_;  // (q_dim + 2 * kv_dim,) or undefined
};

}  // namespace attnvar

// The Llama-family decoder (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM2, TinyLlama,
// Phi-3, OLMo 2, Gemma 1/2/3):
// one forward pass over T new tokens at explicit logical positions, with explicit
// visibility over the KV cache, optional interventions and optional capture.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "attnvar/capture/capture_spec.h"
#include "attnvar/model/attention.h"
#include "attnvar/model/config.h"
#include "attnvar/model/feed_forward.h"
#include "attnvar/model/kv_cache.h"
#include "attnvar/model/linear.h"
#include "attnvar/model/rope.h"

namespace attnvar {

// An intervention on attention scores through the additive bias: add `delta` to the
// scores of `key_slots` in layers [layer_begin, layer_end) for `heads` (empty: all).
// delta = −inf knocks the keys out. Captured scores include it.
struct KeyBias {
  int64_t layer_begin = 0;
  int64_t layer_end = 0;
  std::vector<int64_t> heads;
  std::vector<int64_t> key_slots;
  double delta = -std::numeric_limits<double>::infinity();
};

// One forward pass: T new tokens appended to the cache in this order.
struct PassInput {
  at::Tensor token_ids;   // (T,) int64
  at::Tensor positions;   // (T,) logical positions (float; may repeat or be fractional)
  at::Tensor visibility;  // (T, S_prev + T) bool: query i may attend slot j
  std::vector<SlotInfo> slots = {};  // per new token metadata; empty: positions + ids only
  std::vector<KeyBias> interventions = {};
  bool last_logits_only = false;   // logits for the last token only (saves memory)
  bool no_logits = false;  // no final norm and lm_head: the caller reads only the cache/capture
  // Edits at hook points (hook_edit.h), their slots in the cache's slot space (the pass's
  // rows are slots [cache.size(), cache.size() + T)); checked before the pass.
  std::vector<HookEdit> edits = {};
  // Functions called at hook points by name (the slow path); null: none.
  const std::map<std::string, HookCallback>* callbacks = nullptr;
  // The edits were checked (and their values put on the model's device and dtype) for the
  // whole run already: forward() skips the per-pass check (generate and replay set it).
  bool edits_prepared = false;
};

struct ForwardOutput {
  at::Tensor logits;                  // (T or 1, vocab) f32; undefined with no_logits
  std::vector<LayerCapture> captures;  // one per captured layer, in layer order
  // The hook points CaptureSpec::hook_points named (hook_points.h), by full name, each with
  // the pass's T tokens first, on the host: the values after any edits (what the model used).
  std::map<std::string, at::Tensor> hooks;
};

// One decoder layer. Pre-norm families (Llama, Qwen, Phi-3, Gemma 1) normalise each block's
// input; OLMo 2 normalises each block's output instead; Gemma 2/3 both. Norm weights a
// family lacks stay undefined. Gemma's are stored as (1 + w) in f32 (rms_norm.h).
struct DecoderLayer {
  at::Tensor attn_in_norm;   // (hidden,): HF input_layernorm
  at::Tensor mlp_in_norm;    // (hidden,): HF post_attention_layernorm (pre-norm families),
                             // Gemma 2/3's pre_feedforward_layernorm
  at::Tensor attn_out_norm;  // (hidden,): OLMo 2's and Gemma 2/3's post_attention_layernorm
  at::Tensor mlp_out_norm;   // (hidden,): post_feedforward_layernorm
  Attention attention;
  FeedForwardWeights feed_forward;
};

class LlamaModel {
 public:
  // tensors: HF state-dict names (model.layers.N.self_attn.q_proj.weight, ...), any
  // float dtype; converted to `dtype` on `device`. Missing tensors and shape mismatches
  // throw FormatError naming `origin` and the tensor.
  LlamaModel(ModelConfig config, const std::map<std::string, at::Tensor>& tensors,
             const std::string& origin, at::ScalarType dtype = at::kFloat,
             c10::Device device = c10::kCPU);
  // The same, taking the tensors over: each is removed from `tensors` as it is used, so
  // storage the caller no longer holds is freed layer by layer while q/k/v and gate/up are
  // fused (the fused weight is then the only copy). `tensors` is left holding only names
  // the model does not use.
  // `quantized`: projection and embedding weights kept in their GGUF blocks (f32 models on
  // the CPU only), by HF name; a name there must not also be in `tensors`.
  LlamaModel(ModelConfig config, std::map<std::string, at::Tensor>&& tensors,
             const std::string& origin, at::ScalarType dtype = at::kFloat,
             c10::Device device = c10::kCPU,
             std::map<std::string, QuantizedMatrix>&& quantized = {});

  const ModelConfig& config() const { return config_; }
  // Whether the projection weights are kept quantized (QuantizedMatrix), and the bytes the
  // weights hold.
  bool quantized() const { return lm_head_.quantized(); }
  int64_t weight_bytes() const;
  at::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }

  KVCache new_cache(int64_t initial_capacity = 256) const;

  // Checks hook edits against this model before a run (check_hook_edits with its shapes);
  // num_slots: the run's slot count when known (a replay), else -1.
  void check_edits(const std::vector<HookEdit>& edits, int64_t num_slots = -1) const;
  // check_edits, then the edits with their values on the model's device and in its dtype
  // (converted once per run instead of at every pass).
  std::vector<HookEdit> prepare_edits(const std::vector<HookEdit>& edits,
                                      int64_t num_slots = -1) const;

  // Runs the pass, appends its T slots to `cache` and returns logits (+ captures).
  // Validates shapes, ids and visibility first (ConfigError naming the input); on any
  // error the cache is left as it was.
  ForwardOutput forward(KVCache& cache, const PassInput& input, const CaptureSpec& capture) const;

  // One pass of each of several independent sequences (distinct caches), computed
  // together: every weight is read once for all their rows where the kernels allow it.
  // Each output is bit for bit what forward() gives that sequence alone. Every input is
  // validated before any cache changes.
  std::vector<ForwardOutput> forward_batch(const std::vector<KVCache*>& caches,
                                           const std::vector<PassInput>& inputs,
                                           const CaptureSpec& capture) const;

 private:
  // The checks of forward() (ConfigError naming the problem); the ids as int64 on the
  // model's device.
  at::Tensor check_pass(const KVCache& cache, const PassInput& input) const;
  void append_slots(KVCache& cache, const PassInput& input, const at::Tensor& ids) const;
  at::Tensor build_bias(const PassInput& input, const at::Tensor& visibility, int64_t num_prev,
                        int64_t layer) const;

  // What every layer of one kind (LayerKind) shares in a pass: the visibility as applied,
  // the bias when no intervention varies it by layer (undefined when every slot is visible
  // and nothing intervenes: the fused kernel runs unmasked) and the RoPE tables.
  struct KindInputs {
    at::Tensor visibility;
    at::Tensor shared_bias;
    RopeAngles angles;
  };
  // Index: static_cast<int>(LayerKind). Kinds no layer has are left empty. A sliding layer
  // sees the pass's visibility intersected with the window: only keys whose logical
  // position is less than sliding_window behind the query's (HF's rule q − k < window, on
  // positions rather than indices). Throws ConfigError if that hides every key from a query.
  std::array<KindInputs, 2> kind_inputs(const KVCache& cache, const PassInput& input) const;
  const KindInputs& for_layer(const std::array<KindInputs, 2>& kinds, int64_t layer) const {
    return kinds[config_.sliding(layer) ? 1 : 0];
  }
  const Rope& rope_for(int64_t layer) const {
    return config_.sliding(layer) && local_rope_ ? *local_rope_ : *rope_;
  }
  // The embedding rows of `ids`, scaled as the family does.
  at::Tensor embed(const at::Tensor& ids) const;
  // The output head on final-normed rows: logits (soft-capped where the family caps them).
  at::Tensor output_head(const at::Tensor& x, const std::vector<int64_t>& rows) const;
  // RMSNorm of x by w, or x itself when the family has no such norm (w undefined).
  at::Tensor norm_if(const at::Tensor& x, const at::Tensor& w) const;

  ModelConfig config_;
  at::ScalarType dtype_;
  c10::Device device_;
  Linear embed_tokens_;  // (vocab, hidden)
  std::vector<DecoderLayer> layers_;
  std::unique_ptr<Rope> rope_;  // shared by every layer: angles computed once per pass
  std::unique_ptr<Rope> local_rope_;  // Gemma 3's sliding layers; null: rope_ everywhere
  at::Tensor embed_scale_;  // √hidden as a 0-d tensor in the model's dtype (Gemma), or none
  at::Tensor norm_;     // (hidden,)
  Linear lm_head_;  // (vocab, hidden), the embedding when tied
};

}  // namespace attnvar

// Model configuration, mirroring the field names of Hugging Face `config.json`.
// Torch-free: file readers (config.json, GGUF metadata) fill it, the engine reads it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attnvar {

// HF `rope_scaling` / `rope_parameters.rope_type`.
enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;                                // linear and llama3
  double low_freq_factor = 1.0;                       // llama3
  double high_freq_factor = 4.0;                      // llama3
  int64_t original_max_position_embeddings = 8192;    // llama3
};

// The decoder families the engine implements. SmolLM2 and TinyLlama are `llama`.
//   llama / mistral: no biases unless attention_bias / mlp_bias.
//   qwen2: q, k, v projections carry a bias (o does not).
//   qwen3: RMSNorm over head_dim on q and k before RoPE.
//   gemma (1), gemma2, gemma3_text: see the accessors below (embedding scale, (1 + w)
//   norms, GeGLU, norms around attention and MLP, soft-capping, local/global layers).
enum class Family { kLlama, kMistral, kQwen2, kQwen3, kPhi3, kOlmo2, kGemma, kGemma2, kGemma3 };

// What a layer's attention sees (HF `layer_types`): every visible key, or only keys whose
// logical position is less than sliding_window behind the query's.
enum class LayerKind { kFull, kSliding };

// The feed-forward's gate activation (HF hidden_act / hidden_activation).
enum class Activation { kSilu, kGeluTanh, kGelu };

// The most decoder layers a config may declare (the largest released models have under
// 200). validate() rejects more, so a corrupt count fails before anything proportional to it
// is allocated.
inline constexpr int64_t kMaxHiddenLayers = 4096;
// The largest vocab_size, hidden_size, intermediate_size, head count or head_dim validate()
// accepts (real models stay under 2^20): products of two, such as heads × head_dim or an
// embedding's element count, then cannot overflow int64.
inline constexpr int64_t kMaxDimension = int64_t{1} << 24;

struct ModelConfig {
  // HF name: llama | mistral | qwen2 | qwen3 | phi3 | olmo2 | gemma | gemma2 | gemma3_text
  std::string model_type = "llama";
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // GQA: num_attention_heads % num_key_value_heads == 0
  int64_t head_dim = 0;             // 0 in input means hidden_size / num_attention_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  // Gemma 3's sliding-window layers have their own RoPE (rope_local_base_freq, or
  // rope_parameters.sliding_attention); 0: every layer uses rope_theta / rope_scaling.
  double rope_local_theta = 0.0;
  RopeScaling rope_local_scaling;
  std::string hidden_act = "silu";  // silu | gelu_pytorch_tanh | gelu
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // bias on q, k, v and o (llama/mistral/qwen3 option)
  bool mlp_bias = false;
  // Keys whose logical position is sliding_window or more behind the query's are hidden in
  // the layers of kind kSliding (unset: no layer slides).
  std::optional<int64_t> sliding_window;
  // One kind per layer once validated. Given (HF layer_types) or, when a window is set,
  // derived from the family:
  // Mistral and Phi-3 slide on every layer, Qwen2 from max_window_layers on, Gemma 2 on
  // every other layer starting with the first, Gemma 3 on all but every
  // sliding_window_pattern-th.
  std::vector<LayerKind> layer_types;
  int64_t max_window_layers = 28;      // qwen2
  int64_t sliding_window_pattern = 6;  // gemma3
  // Scores are q·k scaled by query_pre_attn_scalar^-1/2 (Gemma 2/3); 0: head_dim.
  double query_pre_attn_scalar = 0.0;
  // Gemma 2: scores become cap·tanh(scores / cap) before the mask is added, and logits
  // likewise at the output.
  std::optional<double> attn_logit_softcapping;
  std::optional<double> final_logit_softcapping;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;

  Family family() const;
  // q/k/v projection bias: qwen2 always, others when attention_bias.
  bool qkv_bias() const;
  bool o_bias() const;
  bool qk_norm() const;  // qwen3: RMSNorm of each head's q and k (head_dim weights)
  // olmo2: RMSNorm of the whole q and k projections (num_heads·head_dim weights)
  bool qk_norm_whole() const;
  // olmo2: no norm before attention and MLP; one after each, on the block's output
  bool post_norms() const;
  // phi3: q/k/v in one qkv_proj tensor and gate/up in one gate_up_proj tensor
  bool fused_projections() const;
  // gemma*: the embedding rows are multiplied by √hidden_size (in the model's dtype).
  bool embedding_scaled() const;
  // gemma*: every RMSNorm weight is stored as w and applied as (1 + w).
  bool unit_offset_norms() const;
  // gemma*, olmo2: the norm's product with its weight is taken in f32, then cast (Llama
  // casts the normalised value first).
  bool norm_product_in_f32() const;
  // gemma2, gemma3: a norm before and after both attention and MLP (four per layer).
  bool sandwich_norms() const;
  Activation activation() const;
  bool sliding(int64_t layer) const {
    return layer_types[static_cast<size_t>(layer)] == LayerKind::kSliding;
  }
  bool any_sliding() const;
  // The factor q·k is multiplied by: query_pre_attn_scalar^-1/2, else head_dim^-1/2.
  double attention_scale() const;

  // Fills derived fields (head_dim) and checks ranges and supported options.
  // Throws ConfigError naming `origin` and the offending field.
  void validate(const std::string& origin);
};

// Parses the text of an HF config.json (both the `rope_theta`/`rope_scaling` and the
// newer `rope_parameters` spellings, flat or per layer type as Gemma 3 writes it). `origin`
// (usually the path) appears in errors.
ModelConfig config_from_hf_json(const std::string& json_text, const std::string& origin);

// Reads and parses `<dir>/config.json`.
ModelConfig load_hf_config(const std::string& model_dir);

}  // namespace attnvar

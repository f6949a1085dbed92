#include "attnvar/model/config.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "attnvar/error.h"

namespace attnvar {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& origin, const std::string& field,
                       const std::string& why) {
  throw ConfigError(fmt::format("{}: config field '{}': {}", origin, field, why));
}

int64_t get_int(const json& j, const char* key, const std::string& origin,
                std::optional<int64_t> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail(origin, key, "missing");
  }
  if (!it->is_number_integer()) {
    fail(origin, key, "expected an integer, got " + printable(it->dump()));
  }
  return it->get<int64_t>();
}

double get_double(const json& j, const char* key, const std::string& origin,
                  std::optional<double> fallback = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail(origin, key, "missing");
  }
  if (!it->is_number()) fail(origin, key, "expected a number, got " + printable(it->dump()));
  return it->get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& origin, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    fail(origin, key, "expected true or false, got " + printable(it->dump()));
  }
  return it->get<bool>();
}

// One RoPE parameter object (rope_scaling, rope_parameters or one of its per-layer-type
// entries): its rope_theta when present and its scaling. `where` names it in errors.
void read_rope_params(const json& params, const std::string& where, double& theta,
                      RopeScaling& s, const std::string& origin) {
  if (params.contains("rope_theta")) theta = get_double(params, "rope_theta", origin);
  std::string type = "default";
  if (auto t = params.find("rope_type"); t != params.end() && t->is_string()) {
    type = t->get<std::string>();
  } else if (auto t2 = params.find("type"); t2 != params.end() && t2->is_string()) {
    type = t2->get<std::string>();
  }
  if (type == "default") {
    s.type = RopeScalingType::kNone;
  } else if (type == "linear") {
    s.type = RopeScalingType::kLinear;
    s.factor = get_double(params, "factor", origin);
  } else if (type == "llama3") {
    s.type = RopeScalingType::kLlama3;
    s.factor = get_double(params, "factor", origin);
    s.low_freq_factor = get_double(params, "low_freq_factor", origin);
    s.high_freq_factor = get_double(params, "high_freq_factor", origin);
    s.original_max_position_embeddings =
        get_int(params, "original_max_position_embeddings", origin);
  } else {
    fail(origin, where + ".rope_type",
         fmt::format("'{}' is not supported (supported: default, linear, llama3)",
                     printable(type)));
  }
}

// rope_scaling (older configs) or rope_parameters (transformers >= 5), the latter either
// flat or, for models with local and global layers (Gemma 3), one object per layer type.
// Gemma 3's older spelling gives the local layers' base as rope_local_base_freq.
void read_rope(const json& j, ModelConfig& c, const std::string& origin) {
  c.rope_theta = get_double(j, "rope_theta", origin, 10000.0);
  const json* params = nullptr;
  std::string where = "rope_scaling";
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) {
    params = &*it;
    where = "rope_parameters";
  } else if (auto it2 = j.find("rope_scaling"); it2 != j.end() && it2->is_object()) {
    params = &*it2;
  }
  // Partial rotary embeddings (Phi-3 variants, others): only the full rotation is supported.
  for (const json* where_factor : {&j, params}) {
    if (where_factor == nullptr) continue;
    if (auto f = where_factor->find("partial_rotary_factor");
        f != where_factor->end() && !f->is_null()) {
      if (!f->is_number() || f->get<double>() != 1.0) {
        fail(origin, "partial_rotary_factor",
             fmt::format("{} is not supported (only 1.0: RoPE over the whole head)",
                         printable(f->dump())));
      }
    }
  }
  if (c.model_type == "gemma3_text") {
    c.rope_local_theta = get_double(j, "rope_local_base_freq", origin, 10000.0);
  }
  if (!params) return;
  auto full = params->find("full_attention");
  if (full == params->end()) {
    read_rope_params(*params, where, c.rope_theta, c.rope_scaling, origin);
    return;
  }
  if (!full->is_object()) fail(origin, where + ".full_attention", "expected an object");
  read_rope_params(*full, where + ".full_attention", c.rope_theta, c.rope_scaling, origin);
  if (auto local = params->find("sliding_attention"); local != params->end()) {
    if (!local->is_object()) fail(origin, where + ".sliding_attention", "expected an object");
    if (c.rope_local_theta == 0.0) c.rope_local_theta = c.rope_theta;
    read_rope_params(*local, where + ".sliding_attention", c.rope_local_theta,
                     c.rope_local_scaling, origin);
  }
}

std::optional<double> get_optional_double(const json& j, const char* key,
                                          const std::string& origin,
                                          std::optional<double> fallback) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_null()) return std::nullopt;
  return get_double(j, key, origin);
}

// HF layer_types: "full_attention" | "sliding_attention" per layer.
std::vector<LayerKind> read_layer_types(const json& j, const std::string& origin) {
  std::vector<LayerKind> out;
  auto it = j.find("layer_types");
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) fail(origin, "layer_types", "expected a list of strings");
  for (const auto& e : *it) {
    const std::string v = e.is_string() ? e.get<std::string>() : e.dump();
    if (v == "full_attention") {
      out.push_back(LayerKind::kFull);
    } else if (v == "sliding_attention") {
      out.push_back(LayerKind::kSliding);
    } else {
      fail(origin, "layer_types",
           fmt::format("'{}' is not supported (supported: full_attention, sliding_attention)",
                       printable(v)));
    }
  }
  return out;
}

}  // namespace

Family ModelConfig::family() const {
  if (model_type == "llama") return Family::kLlama;
  if (model_type == "mistral") return Family::kMistral;
  if (model_type == "qwen2") return Family::kQwen2;
  if (model_type == "qwen3") return Family::kQwen3;
  if (model_type == "phi3") return Family::kPhi3;
  if (model_type == "olmo2") return Family::kOlmo2;
  if (model_type == "gemma") return Family::kGemma;
  if (model_type == "gemma2") return Family::kGemma2;
  if (model_type == "gemma3_text") return Family::kGemma3;
  const char* hint = model_type == "gemma3" ? " (the text model of Gemma 3 is gemma3_text; "
                                              "the multimodal wrapper is not)"
                                            : "";
  throw ConfigError(fmt::format(
      "model_type '{}' is not supported{} (supported: llama, mistral, qwen2, qwen3, phi3, "
      "olmo2, gemma, gemma2, gemma3_text)",
      printable(model_type), hint));
}

namespace {
bool is_gemma(Family f) {
  return f == Family::kGemma || f == Family::kGemma2 || f == Family::kGemma3;
}
}  // namespace

bool ModelConfig::qkv_bias() const { return family() == Family::kQwen2 || attention_bias; }
bool ModelConfig::o_bias() const { return family() != Family::kQwen2 && attention_bias; }
bool ModelConfig::qk_norm() const {
  return family() == Family::kQwen3 || family() == Family::kGemma3;
}
bool ModelConfig::qk_norm_whole() const { return family() == Family::kOlmo2; }
bool ModelConfig::post_norms() const { return family() == Family::kOlmo2; }
bool ModelConfig::fused_projections() const { return family() == Family::kPhi3; }
bool ModelConfig::embedding_scaled() const { return is_gemma(family()); }
bool ModelConfig::unit_offset_norms() const { return is_gemma(family()); }
bool ModelConfig::norm_product_in_f32() const {
  return is_gemma(family()) || family() == Family::kOlmo2;
}
bool ModelConfig::sandwich_norms() const {
  return family() == Family::kGemma2 || family() == Family::kGemma3;
}
Activation ModelConfig::activation() const {
  if (hidden_act == "gelu_pytorch_tanh") return Activation::kGeluTanh;
  if (hidden_act == "gelu") return Activation::kGelu;
  return Activation::kSilu;
}
bool ModelConfig::any_sliding() const {
  for (LayerKind k : layer_types) {
    if (k == LayerKind::kSliding) return true;
  }
  return false;
}
double ModelConfig::attention_scale() const {
  return 1.0 / std::sqrt(query_pre_attn_scalar > 0 ? query_pre_attn_scalar
                                                   : static_cast<double>(head_dim));
}

void ModelConfig::validate(const std::string& origin) {
  try {
    (void)family();
  } catch (const ConfigError& e) {
    fail(origin, "model_type", e.what());
  }
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) fail(origin, name, fmt::format("must be positive, got {}", v));
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  // Checked before anything proportional to the layer count (the expected-tensor list, the
  // decoder layers, the KV cache) is built: a corrupt count must not become an allocation.
  if (num_hidden_layers > kMaxHiddenLayers) {
    fail(origin, "num_hidden_layers",
         fmt::format("{} exceeds the supported maximum of {} layers", num_hidden_layers,
                     kMaxHiddenLayers));
  }
  positive(num_attention_heads, "num_attention_heads");
  if (num_key_value_heads == 0) num_key_value_heads = num_attention_heads;
  positive(num_key_value_heads, "num_key_value_heads");
  if (num_attention_heads % num_key_value_heads != 0) {
    fail(origin, "num_key_value_heads",
         fmt::format("{} does not divide num_attention_heads {}", num_key_value_heads,
                     num_attention_heads));
  }
  if (head_dim == 0) {
    if (hidden_size % num_attention_heads != 0) {
      fail(origin, "head_dim", "absent and hidden_size is not a multiple of num_attention_heads");
    }
    head_dim = hidden_size / num_attention_heads;
  }
  positive(head_dim, "head_dim");
  for (const auto& [v, name] : {std::pair{vocab_size, "vocab_size"},
                                {hidden_size, "hidden_size"},
                                {intermediate_size, "intermediate_size"},
                                {num_attention_heads, "num_attention_heads"},
                                {num_key_value_heads, "num_key_value_heads"},
                                {head_dim, "head_dim"}}) {
    if (v > kMaxDimension) {
      fail(origin, name,
           fmt::format("{} exceeds the supported maximum of {}", v, kMaxDimension));
    }
  }
  if (head_dim % 2 != 0) fail(origin, "head_dim", fmt::format("must be even for RoPE, got {}", head_dim));
  if (!(rms_norm_eps > 0)) fail(origin, "rms_norm_eps", "must be positive");
  if (!(rope_theta > 0)) fail(origin, "rope_theta", "must be positive");
  if (rope_scaling.type != RopeScalingType::kNone && !(rope_scaling.factor > 0)) {
    fail(origin, "rope_scaling.factor", "must be positive");
  }
  if (rope_local_theta < 0 || std::isnan(rope_local_theta)) {
    fail(origin, "rope_local_base_freq", "must be positive");
  }
  if (rope_local_scaling.type != RopeScalingType::kNone && !(rope_local_scaling.factor > 0)) {
    fail(origin, "rope_parameters.sliding_attention.factor", "must be positive");
  }
  if (hidden_act != "silu" && hidden_act != "gelu_pytorch_tanh" && hidden_act != "gelu") {
    fail(origin, "hidden_act",
         fmt::format("'{}' is not supported (supported: silu, gelu_pytorch_tanh, gelu)",
                     printable(hidden_act)));
  }
  if (mlp_bias) fail(origin, "mlp_bias", "true is not supported");
  if (query_pre_attn_scalar < 0 || std::isnan(query_pre_attn_scalar)) {
    fail(origin, "query_pre_attn_scalar", "must be positive");
  }
  for (const auto& [cap, name] : {std::pair{attn_logit_softcapping, "attn_logit_softcapping"},
                                  {final_logit_softcapping, "final_logit_softcapping"}}) {
    if (cap && !(*cap > 0 && std::isfinite(*cap))) {
      fail(origin, name, fmt::format("must be positive, got {}", *cap));
    }
  }
  if (sliding_window && *sliding_window <= 0) {
    fail(origin, "sliding_window", fmt::format("must be positive, got {}", *sliding_window));
  }
  if (layer_types.empty()) {
    const Family f = family();
    for (int64_t i = 0; i < num_hidden_layers; ++i) {
      bool slides = false;
      if (f == Family::kMistral || f == Family::kPhi3) slides = true;
      if (f == Family::kQwen2) slides = i >= max_window_layers;
      if (f == Family::kGemma2) slides = (i + 1) % 2 != 0;
      if (f == Family::kGemma3) {
        if (sliding_window_pattern <= 0) {
          fail(origin, "sliding_window_pattern",
               fmt::format("must be positive, got {}", sliding_window_pattern));
        }
        slides = (i + 1) % sliding_window_pattern != 0;
      }
      layer_types.push_back(slides && sliding_window ? LayerKind::kSliding : LayerKind::kFull);
    }
  } else if (static_cast<int64_t>(layer_types.size()) != num_hidden_layers) {
    fail(origin, "layer_types",
         fmt::format("{} entries for {} layers", layer_types.size(), num_hidden_layers));
  }
  // As transformers, a sliding layer without a window attends like a full one (it keeps
  // its own RoPE, Gemma 3's local base).
}

ModelConfig config_from_hf_json(const std::string& json_text, const std::string& origin) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", origin, printable(e.what())));
  }
  if (!j.is_object()) throw FormatError(origin + ": config.json is not a JSON object");
  ModelConfig c;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) fail(origin, "model_type", "missing");
  c.model_type = mt->get<std::string>();
  c.vocab_size = get_int(j, "vocab_size", origin);
  c.hidden_size = get_int(j, "hidden_size", origin);
  c.intermediate_size = get_int(j, "intermediate_size", origin);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", origin);
  c.num_attention_heads = get_int(j, "num_attention_heads", origin);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", origin, c.num_attention_heads);
  c.head_dim = get_int(j, "head_dim", origin, 0);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", origin, 2048);
  c.rms_norm_eps = get_double(j, "rms_norm_eps", origin, 1e-6);
  read_rope(j, c, origin);
  // Gemma 2/3 name the activation hidden_activation; Gemma 1's legacy "gelu" means the tanh
  // approximation (as transformers reads it).
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    if (auto it = j.find(key); it != j.end() && it->is_string()) {
      c.hidden_act = it->get<std::string>();
    }
  }
  const bool gemma =
      c.model_type == "gemma" || c.model_type == "gemma2" || c.model_type == "gemma3_text";
  if (c.model_type == "gemma" && c.hidden_act == "gelu") c.hidden_act = "gelu_pytorch_tanh";
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", origin, gemma);
  c.attention_bias = get_bool(j, "attention_bias", origin, false);
  c.mlp_bias = get_bool(j, "mlp_bias", origin, false);
  // Mistral, Phi-3, Gemma 2/3 and Qwen declare a sliding window; Qwen only uses it when
  // use_sliding_window.
  if (auto it = j.find("sliding_window"); it != j.end() && it->is_number_integer()) {
    bool used = c.model_type == "mistral" || c.model_type == "phi3" ||
                c.model_type == "gemma2" || c.model_type == "gemma3_text" ||
                get_bool(j, "use_sliding_window", origin, false);
    if (used) c.sliding_window = it->get<int64_t>();
  }
  if (get_bool(j, "use_bidirectional_attention", origin, false)) {
    fail(origin, "use_bidirectional_attention", "true is not supported (causal decoders only)");
  }
  c.layer_types = read_layer_types(j, origin);
  c.max_window_layers = get_int(j, "max_window_layers", origin, 28);
  c.sliding_window_pattern =
      get_int(j, "sliding_window_pattern", origin, get_int(j, "_sliding_window_pattern", origin, 6));
  if (c.model_type == "gemma2" || c.model_type == "gemma3_text") {
    c.query_pre_attn_scalar = get_double(j, "query_pre_attn_scalar", origin, 256.0);
    // transformers' defaults when absent: Gemma 2 caps at 50 (scores) and 30 (logits).
    const bool gemma2 = c.model_type == "gemma2";
    c.attn_logit_softcapping = get_optional_double(j, "attn_logit_softcapping", origin,
                                                   gemma2 ? std::optional(50.0) : std::nullopt);
    c.final_logit_softcapping = get_optional_double(j, "final_logit_softcapping", origin,
                                                    gemma2 ? std::optional(30.0) : std::nullopt);
  }
  if (auto it = j.find("bos_token_id"); it != j.end() && it->is_number_integer()) {
    c.bos_token_id = it->get<int64_t>();
  }
  if (auto it = j.find("eos_token_id"); it != j.end()) {
    if (it->is_number_integer()) {
      c.eos_token_ids.push_back(it->get<int64_t>());
    } else if (it->is_array()) {
      for (const auto& e : *it) {
        if (!e.is_number_integer()) fail(origin, "eos_token_id", "expected integers");
        c.eos_token_ids.push_back(e.get<int64_t>());
      }
    }
  }
  c.validate(origin);
  return c;
}

ModelConfig load_hf_config(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw MissingError(path + ": cannot open config.json");
  std::ostringstream text;
  text << in.rdbuf();
  return config_from_hf_json(text.str(), path);
}

}  // namespace attnvar

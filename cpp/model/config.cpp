#include "attnvar/model/config.h"

#include <fmt/format.h>

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

// rope_scaling (older configs) or rope_parameters (transformers >= 5).
void read_rope(const json& j, ModelConfig& c, const std::string& origin) {
  const json* params = nullptr;
  const char* where = "rope_scaling";
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) {
    params = &*it;
    where = "rope_parameters";
  } else if (auto it2 = j.find("rope_scaling"); it2 != j.end() && it2->is_object()) {
    params = &*it2;
  }
  c.rope_theta = get_double(j, "rope_theta", origin, 10000.0);
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
  if (!params) return;
  if (params->contains("rope_theta")) c.rope_theta = get_double(*params, "rope_theta", origin);
  std::string type = "default";
  if (auto t = params->find("rope_type"); t != params->end() && t->is_string()) {
    type = t->get<std::string>();
  } else if (auto t2 = params->find("type"); t2 != params->end() && t2->is_string()) {
    type = t2->get<std::string>();
  }
  RopeScaling& s = c.rope_scaling;
  if (type == "default") {
    s.type = RopeScalingType::kNone;
  } else if (type == "linear") {
    s.type = RopeScalingType::kLinear;
    s.factor = get_double(*params, "factor", origin);
  } else if (type == "llama3") {
    s.type = RopeScalingType::kLlama3;
    s.factor = get_double(*params, "factor", origin);
    s.low_freq_factor = get_double(*params, "low_freq_factor", origin);
    s.high_freq_factor = get_double(*params, "high_freq_factor", origin);
    s.original_max_position_embeddings =
        get_int(*params, "original_max_position_embeddings", origin);
  } else {
    fail(origin, std::string(where) + ".rope_type",
         fmt::format("'{}' is not supported (supported: default, linear, llama3)",
                     printable(type)));
  }
}

}  // namespace

Family ModelConfig::family() const {
  if (model_type == "llama") return Family::kLlama;
  if (model_type == "mistral") return Family::kMistral;
  if (model_type == "qwen2") return Family::kQwen2;
  if (model_type == "qwen3") return Family::kQwen3;
  if (model_type == "phi3") return Family::kPhi3;
  if (model_type == "olmo2") return Family::kOlmo2;
  throw ConfigError(fmt::format(
      "model_type '{}' is not supported (supported: llama, mistral, qwen2, qwen3, phi3, olmo2)",
      printable(model_type)));
}

bool ModelConfig::qkv_bias() const { return family() == Family::kQwen2 || attention_bias; }
bool ModelConfig::o_bias() const { return family() != Family::kQwen2 && attention_bias; }
bool ModelConfig::qk_norm() const { return family() == Family::kQwen3; }
bool ModelConfig::qk_norm_whole() const { return family() == Family::kOlmo2; }
bool ModelConfig::post_norms() const { return family() == Family::kOlmo2; }
bool ModelConfig::fused_projections() const { return family() == Family::kPhi3; }

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
  if (hidden_act != "silu") {
    fail(origin, "hidden_act",
         fmt::format("'{}' is not supported (supported: silu)", printable(hidden_act)));
  }
  if (mlp_bias) fail(origin, "mlp_bias", "true is not supported");
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
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string()) {
    c.hidden_act = it->get<std::string>();
  }
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", origin, false);
  c.attention_bias = get_bool(j, "attention_bias", origin, false);
  c.mlp_bias = get_bool(j, "mlp_bias", origin, false);
  // Mistral, Phi-3 and Qwen declare a sliding window; Qwen only uses it when
  // use_sliding_window.
  if (auto it = j.find("sliding_window"); it != j.end() && it->is_number_integer()) {
    bool used = c.model_type == "mistral" || c.model_type == "phi3" ||
                get_bool(j, "use_sliding_window", origin, false);
    if (used) c.sliding_window = it->get<int64_t>();
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

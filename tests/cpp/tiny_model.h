// A tiny random Llama-family model built in C++ (no files, no Python), for engine tests.
#pragma once

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <map>
#include <string>

#include "attnvar/model/config.h"
#include "attnvar/model/llama.h"

namespace attnvar::testing {

inline ModelConfig tiny_config(const std::string& model_type = "llama") {
  ModelConfig c;
  c.model_type = model_type;
  c.vocab_size = 50;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.validate("tiny");
  return c;
}

inline std::map<std::string, at::Tensor> tiny_tensors(const ModelConfig& c, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto w = [&](std::vector<int64_t> shape) { return at::randn(shape, gen) * 0.2; };
  auto norm = [&](int64_t n) { return 1.0 + at::randn({n}, gen) * 0.1; };
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim,
                kv = c.num_key_value_heads * c.head_dim, ff = c.intermediate_size;
  std::map<std::string, at::Tensor> t;
  t["model.embed_tokens.weight"] = w({c.vocab_size, h});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    t[p + "self_attn.q_proj.weight"] = w({q, h});
    t[p + "self_attn.k_proj.weight"] = w({kv, h});
    t[p + "self_attn.v_proj.weight"] = w({kv, h});
    t[p + "self_attn.o_proj.weight"] = w({h, q});
    if (c.qkv_bias()) {
      t[p + "self_attn.q_proj.bias"] = w({q});
      t[p + "self_attn.k_proj.bias"] = w({kv});
      t[p + "self_attn.v_proj.bias"] = w({kv});
    }
    if (c.qk_norm()) {
      t[p + "self_attn.q_norm.weight"] = norm(c.head_dim);
      t[p + "self_attn.k_norm.weight"] = norm(c.head_dim);
    }
    t[p + "mlp.gate_proj.weight"] = w({ff, h});
    t[p + "mlp.up_proj.weight"] = w({ff, h});
    t[p + "mlp.down_proj.weight"] = w({h, ff});
    t[p + "input_layernorm.weight"] = norm(h);
    t[p + "post_attention_layernorm.weight"] = norm(h);
  }
  t["model.norm.weight"] = norm(h);
  t["lm_head.weight"] = w({c.vocab_size, h});
  return t;
}

inline LlamaModel tiny_model(const std::string& model_type = "llama", uint64_t seed = 7) {
  auto c = tiny_config(model_type);
  return LlamaModel(c, tiny_tensors(c, seed), "tiny");
}

inline at::Tensor arange_positions(int64_t begin, int64_t end) {
  return at::arange(begin, end, at::TensorOptions().dtype(at::kDouble));
}

}  // namespace attnvar::testing

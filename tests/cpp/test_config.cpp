// HF config.json parsing: both rope spellings, derived fields, clear errors.
#include <string>

#include "attnvar/error.h"
#include "attnvar/model/config.h"
#include "catch_compat.h"

using attnvar::ConfigError;
using attnvar::config_from_hf_json;

namespace {
const std::string kSmol = R"({
  "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
  "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
  "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_theta": 100000,
  "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2})";
}

TEST_CASE("config: SmolLM2-shaped llama config parses with derived head_dim", "[config]") {
  auto c = config_from_hf_json(kSmol, "smol/config.json");
  CHECK(c.family() == attnvar::Family::kLlama);
  CHECK(c.head_dim == 64);
  CHECK(c.num_key_value_heads == 3);
  CHECK(c.rope_theta == 100000.0);
  CHECK(c.tie_word_embeddings);
  CHECK(c.bos_token_id == 1);
  REQUIRE(c.eos_token_ids.size() == 1);
  CHECK(c.eos_token_ids[0] == 2);
  CHECK_FALSE(c.qkv_bias());
}

TEST_CASE("config: rope_parameters (transformers 5) with llama3 scaling", "[config]") {
  auto c = config_from_hf_json(R"({
    "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "eos_token_id": [5, 7],
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}})",
                               "x");
  CHECK(c.rope_theta == 500000.0);
  CHECK(c.rope_scaling.type == attnvar::RopeScalingType::kLlama3);
  CHECK(c.rope_scaling.factor == 32.0);
  CHECK(c.num_key_value_heads == 2);
  CHECK(c.eos_token_ids == std::vector<int64_t>{5, 7});
}

TEST_CASE("config: qwen2 has q/k/v bias, qwen3 has q/k norm", "[config]") {
  std::string body = R"("vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})";
  auto q2 = config_from_hf_json(R"({"model_type": "qwen2", )" + body, "q2");
  CHECK(q2.qkv_bias());
  CHECK_FALSE(q2.o_bias());
  CHECK_FALSE(q2.qk_norm());
  auto q3 = config_from_hf_json(R"({"model_type": "qwen3", )" + body, "q3");
  CHECK(q3.qk_norm());
  CHECK_FALSE(q3.qkv_bias());
}

TEST_CASE("config: unsupported or inconsistent settings are errors naming the field",
          "[config]") {
  auto message_of = [](const std::string& json) -> std::string {
    try {
      config_from_hf_json(json, "bad/config.json");
    } catch (const attnvar::Error& e) {
      return e.what();
    }
    return "no error";
  };
  std::string body = R"("vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1)";
  auto m1 = message_of(R"({"model_type": "gpt2", "num_attention_heads": 2, )" + body + "}");
  CHECK(m1.find("bad/config.json") != std::string::npos);
  CHECK(m1.find("model_type") != std::string::npos);
  auto m2 = message_of(
      R"({"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 3, )" + body +
      "}");
  CHECK(m2.find("num_key_value_heads") != std::string::npos);
  auto m3 = message_of(
      R"({"model_type": "llama", "num_attention_heads": 2, "rope_scaling": {"type": "yarn", "factor": 2}, )" +
      body + "}");
  CHECK(m3.find("yarn") != std::string::npos);
  auto m4 = message_of(R"({"model_type": "llama", "num_attention_heads": 2})");
  CHECK(m4.find("vocab_size") != std::string::npos);
  CHECK_THROWS_AS(config_from_hf_json("{not json", "x"), attnvar::FormatError);
  auto m5 = message_of(R"({"model_type": "llama", "hidden_act": "relu", "num_attention_heads": 2, )" +
                       body + "}");
  CHECK(m5.find("'hidden_act': 'relu' is not supported") != std::string::npos);
  auto m6 = message_of(R"({"model_type": "gemma3", "num_attention_heads": 2, )" + body + "}");
  CHECK(m6.find("gemma3_text") != std::string::npos);
  auto m7 = message_of(R"({"model_type": "gemma2", "attn_logit_softcapping": -1, )"
                       R"("num_attention_heads": 2, )" + body + "}");
  CHECK(m7.find("'attn_logit_softcapping': must be positive") != std::string::npos);
  auto m8 = message_of(R"({"model_type": "gemma3_text", "use_bidirectional_attention": true, )"
                       R"("num_attention_heads": 2, )" + body + "}");
  CHECK(m8.find("use_bidirectional_attention") != std::string::npos);
}

TEST_CASE("config: a layer count over the cap is an error before anything is built",
          "[config][hostile]") {
  const std::string rest = R"("model_type": "llama", "vocab_size": 10, "hidden_size": 8,
    "intermediate_size": 16, "num_attention_heads": 2)";
  for (const std::string n : {"4097", "10000000", "4294967296"}) {
    INFO(n);
    try {
      config_from_hf_json("{" + rest + R"(, "num_hidden_layers": )" + n + "}", "big/config.json");
      FAIL("no error");
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      CHECK(what.find("big/config.json") != std::string::npos);
      CHECK(what.find("'num_hidden_layers'") != std::string::npos);
      CHECK(what.find("maximum of 4096") != std::string::npos);
    }
  }
  CHECK(config_from_hf_json("{" + rest + R"(, "num_hidden_layers": 4096})", "x")
            .num_hidden_layers == attnvar::kMaxHiddenLayers);
}

TEST_CASE("config: dimensions whose products could overflow int64 are errors naming the field",
          "[config][hostile]") {
  const std::string base = R"("model_type": "llama", "num_hidden_layers": 1, "vocab_size": 10,
    "intermediate_size": 16, "num_attention_heads": 2)";
  for (const auto& [extra, field] :
       {std::pair<std::string, std::string>{R"("hidden_size": 1099511627776)", "hidden_size"},
        {R"("hidden_size": 8, "head_dim": 4294967296)", "head_dim"}}) {
    INFO(extra);
    try {
      config_from_hf_json("{" + base + ", " + extra + "}", "dims/config.json");
      FAIL("no error");
    } catch (const ConfigError& e) {
      const std::string what = e.what();
      CHECK(what.find("dims/config.json: config field '" + field + "'") != std::string::npos);
      CHECK(what.find("exceeds the supported maximum of 16777216") != std::string::npos);
    }
  }
}

TEST_CASE("config: ill-formed UTF-8 in config.json gives a FormatError with a valid message",
          "[config][hostile]") {
  try {
    config_from_hf_json("{\"model_type\": \"ll\xff\xfe" "ama\"}", "utf8/config.json");
    FAIL("no error");
  } catch (const attnvar::FormatError& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find("utf8/config.json") != std::string::npos);
    CHECK(what.find("\\xff") != std::string::npos);
    CHECK(what.find('\xff') == std::string::npos);
  }
}

// Bindings for the model area: configuration and RoPE.
#include <torch/csrc/utils/pybind.h>

#include "attnvar/error.h"
#include "attnvar/model/config.h"
#include "attnvar/model/rope.h"
#include "bindings.h"

namespace py = pybind11;

namespace attnvar::python {
namespace {

RopeParams rope_params(int64_t head_dim, double theta, const std::string& scaling,
                       double factor, double low_freq_factor, double high_freq_factor,
                       int64_t original_max_position_embeddings) {
  RopeParams p;
  p.head_dim = head_dim;
  p.theta = theta;
  if (scaling == "default" || scaling.empty()) {
    p.scaling.type = RopeScalingType::kNone;
  } else if (scaling == "linear") {
    p.scaling.type = RopeScalingType::kLinear;
  } else if (scaling == "llama3") {
    p.scaling.type = RopeScalingType::kLlama3;
  } else {
    throw ConfigError("rope: scaling '" + scaling +
                      "' is not supported (supported: default, linear, llama3)");
  }
  p.scaling.factor = factor;
  p.scaling.low_freq_factor = low_freq_factor;
  p.scaling.high_freq_factor = high_freq_factor;
  p.scaling.original_max_position_embeddings = original_max_position_embeddings;
  return p;
}

}  // namespace

void bind_model(py::module_& m) {
  m.def(
      "rope_inv_freq",
      [](int64_t head_dim, double theta, const std::string& scaling, double factor,
         double low_freq_factor, double high_freq_factor, int64_t original_max) {
        Rope rope(rope_params(head_dim, theta, scaling, factor, low_freq_factor,
                              high_freq_factor, original_max),
                  c10::Device(c10::kCPU));
        return rope.inv_freq();
      },
      py::arg("head_dim"), py::arg("theta") = 10000.0, py::arg("scaling") = "default",
      py::arg("factor") = 1.0, py::arg("low_freq_factor") = 1.0,
      py::arg("high_freq_factor") = 4.0, py::arg("original_max_position_embeddings") = 8192,
      "RoPE inverse frequencies (head_dim/2,) f32, computed as transformers does.");
  m.def(
      "rope_apply",
      [](const at::Tensor& x, const at::Tensor& positions, double theta,
         const std::string& scaling, double factor, double low_freq_factor,
         double high_freq_factor, int64_t original_max) {
        py::gil_scoped_release release;
        Rope rope(rope_params(x.size(-1), theta, scaling, factor, low_freq_factor,
                              high_freq_factor, original_max),
                  x.device());
        return rope.apply(x, rope.angles(positions));
      },
      py::arg("x"), py::arg("positions"), py::arg("theta") = 10000.0,
      py::arg("scaling") = "default", py::arg("factor") = 1.0, py::arg("low_freq_factor") = 1.0,
      py::arg("high_freq_factor") = 4.0, py::arg("original_max_position_embeddings") = 8192,
      "Rotate x (..., T, head_dim) by RoPE at float logical positions (T,), HF rotate_half "
      "layout. Positions may repeat and be fractional.");
  m.def(
      "config_from_hf_json",
      [](const std::string& text, const std::string& origin) {
        ModelConfig c = config_from_hf_json(text, origin);
        py::dict d;
        d["model_type"] = c.model_type;
        d["vocab_size"] = c.vocab_size;
        d["hidden_size"] = c.hidden_size;
        d["intermediate_size"] = c.intermediate_size;
        d["num_hidden_layers"] = c.num_hidden_layers;
        d["num_attention_heads"] = c.num_attention_heads;
        d["num_key_value_heads"] = c.num_key_value_heads;
        d["head_dim"] = c.head_dim;
        d["rms_norm_eps"] = c.rms_norm_eps;
        d["rope_theta"] = c.rope_theta;
        d["tie_word_embeddings"] = c.tie_word_embeddings;
        return d;
      },
      py::arg("text"), py::arg("origin") = "<config>",
      "Parse the text of an HF config.json into a dict of the fields attnvar uses.");
}

}  // namespace attnvar::python

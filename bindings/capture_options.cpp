// Python keyword options -> CaptureSpec and KeyBias lists, shared by forward, generate
// and replay bindings.
#include <pybind11/stl.h>

#include <limits>

#include "attnvar/error.h"
#include "bindings.h"

namespace py = pybind11;

namespace attnvar::python {

CaptureSpec capture_spec(bool capture, std::optional<std::vector<int64_t>> layers,
                         std::optional<std::vector<int64_t>> heads, bool probabilities,
                         bool scores, bool value_norms, const std::string& dtype,
                         std::optional<std::vector<std::string>> hooks) {
  CaptureSpec spec;
  spec.hook_points = hooks.value_or(std::vector<std::string>{});
  spec.enabled = capture;
  spec.layers = layers.value_or(std::vector<int64_t>{});
  spec.heads = heads.value_or(std::vector<int64_t>{});
  spec.probabilities = probabilities;
  spec.scores = scores;
  spec.value_norms = value_norms;
  if (dtype == "float32") {
    spec.dtype = CaptureDtype::kFloat32;
  } else if (dtype == "float16") {
    spec.dtype = CaptureDtype::kFloat16;
  } else {
    throw ConfigError("capture dtype '" + dtype + "' is not one of float32, float16");
  }
  return spec;
}

std::vector<KeyBias> key_biases(const py::list& items) {
  std::vector<KeyBias> out;
  for (const auto& item : items) {
    auto d = item.cast<py::dict>();
    KeyBias b;
    b.layer_begin = d["layer_begin"].cast<int64_t>();
    b.layer_end = d["layer_end"].cast<int64_t>();
    if (d.contains("heads") && !d["heads"].is_none()) b.heads = d["heads"].cast<std::vector<int64_t>>();
    b.key_slots = d["key_slots"].cast<std::vector<int64_t>>();
    b.delta = d.contains("delta") ? d["delta"].cast<double>()
                                  : -std::numeric_limits<double>::infinity();
    out.push_back(std::move(b));
  }
  return out;
}

}  // namespace attnvar::python

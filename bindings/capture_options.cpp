// Python keyword options -> CaptureSpec and KeyBias lists, shared by forward, generate
// and replay bindings.
#include <torch/csrc/utils/pybind.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

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

std::vector<HookEdit> hook_edits(const py::list& items) {
  static const std::vector<std::string> kKeys = {"kind", "hook", "heads", "slots", "value"};
  std::vector<HookEdit> out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (!py::isinstance<py::dict>(items[i])) {
      throw ConfigError(fmt::format("edits[{}]: a dict (kind, hook, heads, slots, value)", i));
    }
    auto d = items[i].cast<py::dict>();
    for (const auto& [k, v] : d) {
      const auto key = py::str(k).cast<std::string>();
      if (std::find(kKeys.begin(), kKeys.end(), key) == kKeys.end()) {
        throw ConfigError(fmt::format("edits[{}]: unknown key '{}' (known: kind, hook, heads, "
                                      "slots, value)", i, key));
      }
    }
    for (const char* key : {"kind", "hook"}) {
      if (!d.contains(key)) throw ConfigError(fmt::format("edits[{}]: '{}' is missing", i, key));
    }
    // A field of the wrong type is a ConfigError naming it, not pybind's cast error.
    const auto field = [&](const char* key, auto* out) {
      using T = std::remove_pointer_t<decltype(out)>;
      try {
        *out = d[key].cast<T>();
      } catch (const py::cast_error&) {
        throw ConfigError(fmt::format("edits[{}].{}: expected {}, got {}", i, key,
                                      std::is_same_v<T, std::string> ? "a string"
                                      : std::is_same_v<T, at::Tensor> ? "a tensor"
                                                                      : "a list of integers",
                                      py::str(py::type::of(d[key])).cast<std::string>()));
      }
    };
    HookEdit e;
    std::string kind;
    field("kind", &kind);
    if (kind == "zero") {
      e.kind = EditKind::kZero;
    } else if (kind == "set") {
      e.kind = EditKind::kSet;
    } else if (kind == "add") {
      e.kind = EditKind::kAdd;
    } else {
      throw ConfigError(fmt::format("edits[{}]: kind '{}' is not one of zero, set, add", i, kind));
    }
    field("hook", &e.hook);
    if (d.contains("heads") && !d["heads"].is_none()) field("heads", &e.heads);
    if (d.contains("slots") && !d["slots"].is_none()) field("slots", &e.slots);
    if (d.contains("value") && !d["value"].is_none()) field("value", &e.value);
    out.push_back(std::move(e));
  }
  return out;
}

std::map<std::string, HookCallback> hook_callbacks(const py::object& fns) {
  std::map<std::string, HookCallback> out;
  if (fns.is_none()) return out;
  for (const auto& [k, v] : fns.cast<py::dict>()) {
    const auto name = py::str(k).cast<std::string>();
    if (!PyCallable_Check(v.ptr())) {
      throw ConfigError(fmt::format("hook_fns['{}'] is not callable", name));
    }
    auto fn = py::reinterpret_borrow<py::function>(v);
    out[name] = [fn](const std::string& point, const at::Tensor& t) -> at::Tensor {
      py::gil_scoped_acquire gil;
      // A copy (the engine's tensor may be a view of its buffers), made outside inference
      // mode so the function may keep it, edit it in place or use it with autograd.
      at::Tensor copy;
      {
        c10::InferenceMode ordinary(false);
        copy = t.clone();
      }
      py::object r = fn(point, copy);
      if (r.is_none()) return at::Tensor();
      try {
        return r.cast<at::Tensor>();
      } catch (const py::cast_error&) {
        throw ConfigError(fmt::format("the hook function at {} returned {}; it must return a "
                                      "tensor or None",
                                      point, py::str(py::type::of(r)).cast<std::string>()));
      }
    };
  }
  return out;
}

}  // namespace attnvar::python

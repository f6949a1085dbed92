// Bindings for the model area: configuration, RoPE, visibility, KV cache, the decoder.
#include <torch/csrc/utils/pybind.h>

#include "attnvar/error.h"
#include <pybind11/stl.h>

#include <ATen/Context.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <fmt/format.h>

#include <limits>

#include "attnvar/load_model.h"
#include "attnvar/model/config.h"
#include "attnvar/model/kv_cache.h"
#include "attnvar/model/llama.h"
#include "attnvar/model/gemv_rows.h"
#include "attnvar/model/projection.h"
#include "attnvar/model/rope.h"
#include "attnvar/model/single_thread.h"
#include "attnvar/model/visibility.h"
#include "attnvar/capture/hook_points.h"
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

// 'cpu', 'cuda' or 'cuda:N'; a device this torch build cannot reach is refused by name.
c10::Device parse_device(const std::string& name) {
  std::optional<c10::Device> dev;
  try {
    dev.emplace(name);
  } catch (const c10::Error&) {
    throw ConfigError("device '" + name + "' is not a device name (cpu, cuda, cuda:N)");
  }
  if (!dev->is_cpu() && !dev->is_cuda()) {
    throw ConfigError("device '" + name + "': only cpu and cuda devices are supported");
  }
  if (dev->is_cuda()) {
    if (!at::hasCUDA()) {
      throw ConfigError("device '" + name + "': this torch build has no CUDA device available");
    }
    const auto* cuda = c10::impl::getDeviceGuardImpl(c10::kCUDA);
    if (!dev->has_index()) return cuda->getDevice();  // 'cuda' is the current device
    if (dev->index() >= cuda->deviceCount()) {
      throw ConfigError(fmt::format("device '{}': this machine has {} CUDA device(s)", name,
                                    cuda->deviceCount()));
    }
  }
  return *dev;
}

py::dict forward_output(ForwardOutput&& out) {
  py::dict d;
  d["logits"] = out.logits;
  py::list layers, probs, scores, norms;
  for (auto& c : out.captures) {
    layers.append(c.layer);
    probs.append(c.probabilities.defined() ? py::cast(c.probabilities) : py::none());
    scores.append(c.scores.defined() ? py::cast(c.scores) : py::none());
    norms.append(c.value_norms.defined() ? py::cast(c.value_norms) : py::none());
  }
  d["layers"] = layers;
  d["attention"] = probs;
  d["scores"] = scores;
  d["value_norms"] = norms;
  py::dict hooks;
  for (auto& [name, t] : out.hooks) hooks[py::str(name)] = t;
  d["hooks"] = hooks;
  return d;
}

}  // namespace

void bind_model(py::module_& m) {
  m.def(
      "load_model",
      [](const std::string& path, at::ScalarType dtype, const std::string& device,
         const std::string& weights) {
        const c10::Device dev = parse_device(device);
        if (weights != "quantized" && weights != "float32") {
          throw ConfigError(fmt::format("load_model: weights must be 'quantized' or 'float32', "
                                        "got '{}'", printable(weights)));
        }
        LoadedModel loaded;
        {
          py::gil_scoped_release release;
          loaded = load_model(path, dtype, dev,
                              weights == "quantized" ? WeightMode::kQuantized
                                                     : WeightMode::kFloat32);
        }
        py::dict d;
        d["model"] = py::cast(std::move(*loaded.decoder));
        d["tokenizer"] = loaded.tokenizer ? py::cast(std::move(*loaded.tokenizer)) : py::none();
        d["identity"] = identity_to_dict(loaded.identity);
        d["eos_ids"] = loaded.eos_ids;
        return d;
      },
      py::arg("path"), py::arg("dtype") = at::kFloat, py::arg("device") = "cpu",
      py::arg("weights") = "quantized",
      "Load a .gguf file or an HF directory onto a device ('cpu', 'cuda', 'cuda:1'): "
      "{'model', 'tokenizer', 'identity', 'eos_ids'}. weights: 'quantized' keeps a GGUF "
      "file's quantized weights in their blocks (float32 on the CPU; bit for bit the "
      "float32 results), 'float32' decodes them at load.");

  m.def("causal_visibility", &causal_visibility, py::arg("num_new"), py::arg("num_prev") = 0,
        "(T, S_prev + T) bool: every earlier slot, causal among the new tokens.");
  m.def(
      "set_visibility",
      [](int64_t k, int64_t num_prev, const std::string& mode) {
        return set_visibility(k, num_prev, sibling_visibility_from_string(mode));
      },
      py::arg("num_members"), py::arg("num_prev"), py::arg("mode") = "isolated",
      "(k, S_prev + k) bool for one parallel set: every earlier slot; siblings per mode "
      "(isolated | visible | causal).");

  py::class_<KVCache>(m, "KVCache", "Keys and values by slot; positions are metadata.")
      .def_property_readonly("size", &KVCache::size)
      .def_property_readonly("capacity", &KVCache::capacity)
      .def_property_readonly("positions", &KVCache::positions)
      .def_property_readonly("token_ids",
                             [](const KVCache& c) {
                               std::vector<int64_t> ids;
                               for (const auto& s : c.slots()) ids.push_back(s.token_id);
                               return ids;
                             })
      .def("keys", [](const KVCache& c, int64_t layer) { return c.keys(layer, c.size()).clone(); },
           py::arg("layer"), "(num_kv_heads, size, head_dim) copy of one layer's keys (after RoPE).")
      .def("values",
           [](const KVCache& c, int64_t layer) { return c.values(layer, c.size()).clone(); },
           py::arg("layer"))
      .def("truncate", &KVCache::truncate, py::arg("num_slots"))
      .def("remove_slots", &KVCache::remove_slots, py::arg("slots"));

  py::class_<LlamaModel>(m, "Model", "A Llama-family decoder on LibTorch.")
      .def_static(
          "from_tensors",
          [](const std::string& config_json, const std::map<std::string, at::Tensor>& tensors,
             at::ScalarType dtype, const std::string& origin, const std::string& device) {
            return LlamaModel(config_from_hf_json(config_json, origin), tensors, origin, dtype,
                              parse_device(device));
          },
          py::arg("config_json"), py::arg("tensors"), py::arg("dtype") = at::kFloat,
          py::arg("origin") = "<tensors>", py::arg("device") = "cpu",
          "Build from an HF config.json text and an HF-named state dict.")
      .def_property_readonly("num_layers",
                             [](const LlamaModel& m) { return m.config().num_hidden_layers; })
      .def_property_readonly("num_heads",
                             [](const LlamaModel& m) { return m.config().num_attention_heads; })
      .def_property_readonly("vocab_size", [](const LlamaModel& m) { return m.config().vocab_size; })
      .def_property_readonly(
          "config", [](const LlamaModel& m) { return config_to_dict(m.config()); },
          "The model's configuration as a dict (config_from_hf_json's fields).")
      .def_property_readonly(
          "context_length", [](const LlamaModel& m) { return m.config().max_position_embeddings; },
          "Positions the model was trained on (max_position_embeddings / context_length).")
      .def_property_readonly("device", [](const LlamaModel& m) { return m.device().str(); },
                             "Where the weights and the KV cache live ('cpu', 'cuda:0').")
      .def_property_readonly(
          "weights", [](const LlamaModel& m) { return m.quantized() ? "quantized" : "float32"; },
          "How the weights are held: 'quantized' (GGUF blocks) or 'float32' (dense tensors "
          "in the model's dtype).")
      .def_property_readonly("weight_bytes", &LlamaModel::weight_bytes,
                             "Bytes the weights hold in memory.")
      .def("new_cache", &LlamaModel::new_cache, py::arg("initial_capacity") = 256)
      .def(
          "forward",
          [](const LlamaModel& model, KVCache& cache, const at::Tensor& ids,
             const at::Tensor& positions, const at::Tensor& visibility, bool capture,
             std::optional<std::vector<int64_t>> layers, std::optional<std::vector<int64_t>> heads,
             bool probabilities, bool scores, bool value_norms, const std::string& capture_dtype,
             const py::list& interventions, bool last_logits_only,
             std::optional<std::vector<std::string>> hooks, const py::list& edits,
             const py::object& hook_fns) {
            PassInput in{ids, positions, visibility, {}, key_biases(interventions),
                         last_logits_only};
            in.edits = hook_edits(edits);
            const auto callbacks = hook_callbacks(hook_fns);
            in.callbacks = &callbacks;
            auto spec = capture_spec(capture, layers, heads, probabilities, scores, value_norms,
                                     capture_dtype, hooks);
            ForwardOutput out;
            {
              py::gil_scoped_release release;
              out = model.forward(cache, in, spec);
            }
            return forward_output(std::move(out));
          },
          py::arg("cache"), py::arg("ids"), py::arg("positions"), py::arg("visibility"),
          py::arg("capture") = false, py::arg("layers") = py::none(),
          py::arg("heads") = py::none(), py::arg("probabilities") = true,
          py::arg("scores") = false, py::arg("value_norms") = false,
          py::arg("capture_dtype") = "float32", py::arg("interventions") = py::list(),
          py::arg("last_logits_only") = false, py::arg("hooks") = py::none(),
          py::arg("edits") = py::list(), py::arg("hook_fns") = py::none(),
          "One pass over T new tokens: returns {'logits', 'layers', 'attention', 'scores', "
          "'value_norms', 'hooks'} and appends the tokens' slots to the cache. `hooks`: hook "
          "point names (hook_point_names()) to record; 'hooks' maps each to a tensor with the "
          "pass's tokens first. `edits`: interventions at hook points, dicts (kind='zero'|'set'|"
          "'add', hook, heads, slots, value); `hook_fns`: {name: fn(name, tensor) -> tensor or "
          "None}, called at that point (slow path).");
  m.def("hook_point_names", &hook_point_names, py::arg("num_layers"),
        "Every hook point name of a model with num_layers layers, in forward order "
        "(TransformerLens names: blocks.{l}.hook_resid_pre, ..., ln_final.hook_normalized).");

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
        return config_to_dict(config_from_hf_json(text, origin));
      },
      py::arg("text"), py::arg("origin") = "<config>",
      "Parse the text of an HF config.json into a dict of the fields attnvar uses.");
  m.def(
      "project",
      [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b) {
        if (x.dim() != 2 || w.dim() != 2 || x.size(1) != w.size(1)) {
          throw ConfigError(fmt::format("project: x must be (T, in) and w (out, in) with the same "
                                        "in; got x {} and w {}",
                                        c10::str(x.sizes()), c10::str(w.sizes())));
        }
        if (b && (b->dim() != 1 || b->size(0) != w.size(0))) {
          throw ConfigError(fmt::format("project: b must be (out,) = ({},); got {}", w.size(0),
                                        c10::str(b->sizes())));
        }
        py::gil_scoped_release release;
        return project(x, w, b ? *b : at::Tensor());
      },
      py::arg("x"), py::arg("w"), py::arg("b") = py::none(),
      "The engine's projection y = x wᵀ (+ b): up to 16 f32 CPU rows through gemv_rows, which "
      "reads w once for all rows; anything else through torch's linear. For tests and the "
      "benchmark's read-bandwidth probe.");
  m.def(
      "kernel_info",
      [] {
        py::dict d;
        d["gemv_rows_kernel"] = gemv_rows_auto_kernel();
        d["parallel_for_threads"] = parallel_for_threads();
        return d;
      },
      "How the engine's own kernels run here: the projection kernel picked for this CPU and "
      "how many threads attnvar's parallel loops use now (torch.get_num_threads() when the "
      "build links torch's OpenMP runtime).");
}

}  // namespace attnvar::python

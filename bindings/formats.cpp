// Bindings for the model file formats: GGUF metadata and tensors, safetensors, and the
// weights loader. Tensors are returned as torch tensors; metadata as plain Python values.
#include <torch/csrc/utils/pybind.h>

#include "attnvar/error.h"
#include "attnvar/model/config.h"
#include "attnvar/model/dequantize.h"
#include "attnvar/model/gguf.h"
#include "attnvar/model/safetensors.h"
#include "attnvar/model/weights.h"
#include "bindings.h"

namespace py = pybind11;

namespace attnvar::python {
namespace {

// GGUF strings should be UTF-8 but the reader keeps their bytes as found: a string with
// ill-formed bytes reaches Python with each such byte as "\xNN" (utf8_message), never as a
// UnicodeDecodeError from the conversion.
py::str text(const std::string& s) { return py::str(utf8_message(s)); }

py::object gguf_value_to_py(const GgufValue& v) {
  return std::visit(
      [](const auto& x) -> py::object {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return text(x);
        } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
          py::list out(x.size());
          for (size_t i = 0; i < x.size(); ++i) out[i] = text(x[i]);
          return std::move(out);
        } else {
          return py::cast(x);
        }
      },
      v.value);
}

const char* rope_type_name(RopeScalingType t) {
  switch (t) {
    case RopeScalingType::kNone:
      return "default";
    case RopeScalingType::kLinear:
      return "linear";
    case RopeScalingType::kLlama3:
      return "llama3";
  }
  return "default";
}

}  // namespace

py::dict config_to_dict(const ModelConfig& c) {
  py::dict d;
  d["model_type"] = c.model_type;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["intermediate_size"] = c.intermediate_size;
  d["num_hidden_layers"] = c.num_hidden_layers;
  d["num_attention_heads"] = c.num_attention_heads;
  d["num_key_value_heads"] = c.num_key_value_heads;
  d["head_dim"] = c.head_dim;
  d["max_position_embeddings"] = c.max_position_embeddings;
  d["rms_norm_eps"] = c.rms_norm_eps;
  d["rope_theta"] = c.rope_theta;
  py::dict rope;
  rope["rope_type"] = rope_type_name(c.rope_scaling.type);
  if (c.rope_scaling.type != RopeScalingType::kNone) rope["factor"] = c.rope_scaling.factor;
  if (c.rope_scaling.type == RopeScalingType::kLlama3) {
    rope["low_freq_factor"] = c.rope_scaling.low_freq_factor;
    rope["high_freq_factor"] = c.rope_scaling.high_freq_factor;
    rope["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
  }
  d["rope_scaling"] = rope;
  d["hidden_act"] = c.hidden_act;
  d["tie_word_embeddings"] = c.tie_word_embeddings;
  d["attention_bias"] = c.attention_bias;
  d["mlp_bias"] = c.mlp_bias;
  d["sliding_window"] = c.sliding_window ? py::cast(*c.sliding_window) : py::none();
  py::list kinds;
  for (LayerKind k : c.layer_types) {
    kinds.append(k == LayerKind::kSliding ? "sliding_attention" : "full_attention");
  }
  d["layer_types"] = kinds;
  if (c.rope_local_theta > 0) {
    // Local and global layers with their own RoPE (Gemma 3), spelled as transformers does,
    // so that the dict reads back through config_from_hf_json.
    py::dict local;
    local["rope_theta"] = c.rope_local_theta;
    local["rope_type"] = rope_type_name(c.rope_local_scaling.type);
    if (c.rope_local_scaling.type != RopeScalingType::kNone) {
      local["factor"] = c.rope_local_scaling.factor;
    }
    py::dict global = rope.attr("copy")();
    global["rope_theta"] = c.rope_theta;
    py::dict per_kind;
    per_kind["full_attention"] = global;
    per_kind["sliding_attention"] = local;
    d["rope_parameters"] = per_kind;
  }
  d["query_pre_attn_scalar"] =
      c.query_pre_attn_scalar > 0 ? py::cast(c.query_pre_attn_scalar) : py::none();
  d["attn_logit_softcapping"] =
      c.attn_logit_softcapping ? py::cast(*c.attn_logit_softcapping) : py::none();
  d["final_logit_softcapping"] =
      c.final_logit_softcapping ? py::cast(*c.final_logit_softcapping) : py::none();
  d["bos_token_id"] = c.bos_token_id ? py::cast(*c.bos_token_id) : py::none();
  d["eos_token_id"] = c.eos_token_ids;
  return d;
}

py::dict identity_to_dict(const ModelIdentity& id) {
  py::dict d;
  d["path"] = id.path;
  d["format"] = id.format;
  d["sha256"] = id.sha256;
  d["quantization"] = id.quantization;
  d["note"] = id.note;
  return d;
}

void bind_formats(py::module_& m) {
  m.def(
      "gguf_metadata",
      [](const std::string& path) {
        GgufFile f(path);
        py::dict d;
        for (const auto& key : f.keys()) d[text(key)] = gguf_value_to_py(*f.value(key));
        return d;
      },
      py::arg("path"),
      "GGUF metadata as {key: value} in file order (ints, floats, bools, strings, lists). "
      "Keys and strings that are not valid UTF-8 come back with each ill-formed byte as "
      "\\xNN.");
  m.def(
      "gguf_tensor_infos",
      [](const std::string& path) {
        GgufFile f(path);
        py::list out;
        for (const auto& t : f.tensors()) {
          py::dict d;
          d["name"] = text(t.name);
          d["shape"] = t.shape;
          d["type"] = t.type;
          d["type_name"] = ggml_type_name(t.type);
          d["offset"] = t.offset;
          d["nbytes"] = t.nbytes;
          out.append(d);
        }
        return out;
      },
      py::arg("path"),
      "Tensor infos in file order: name, shape (GGUF order, ne[0] first), type (ggml "
      "number), type_name, offset (absolute, bytes), nbytes. A name that is not valid UTF-8 "
      "comes back with each ill-formed byte as \\xNN.");
  m.def(
      "gguf_dequantize",
      [](const std::string& path, const std::string& name) {
        py::gil_scoped_release release;
        GgufFile f(path);
        const GgufTensorInfo* t = f.find_tensor(name);
        if (!t) throw MissingError(path + ": tensor '" + printable(name) + "' not found");
        return gguf_tensor_to_f32(f, *t);
      },
      py::arg("path"), py::arg("name"),
      "One GGUF tensor dequantized to f32, in the file's row order with torch's dimension "
      "order (GGUF shape reversed), before any q/k un-permutation: what "
      "gguf.quants.dequantize returns.");
  m.def(
      "load_weights",
      [](const std::string& path, at::ScalarType dtype, at::Device device) {
        Weights w;
        {
          py::gil_scoped_release release;
          w = load_weights(path, dtype, device);
        }
        py::dict tensors;
        for (auto& [name, t] : w.tensors) tensors[py::str(name)] = t;
        return py::make_tuple(config_to_dict(w.config), tensors, identity_to_dict(w.identity));
      },
      py::arg("path"), py::arg("dtype") = at::kFloat, py::arg("device") = at::Device(at::kCPU),
      "Load an HF directory or a GGUF file: (config dict, {HF name: tensor}, identity dict).");
  m.def(
      "safetensors_read",
      [](const std::string& path) {
        std::map<std::string, at::Tensor> out;
        {
          py::gil_scoped_release release;
          SafetensorsFile f(path);
          for (const auto& t : f.tensors()) out.emplace(t.name, safetensors_to_tensor(t));
        }
        py::dict d;
        for (auto& [name, t] : out) d[py::str(name)] = t;
        return d;
      },
      py::arg("path"), "All tensors of one .safetensors file, in their own dtypes.");
}

}  // namespace attnvar::python

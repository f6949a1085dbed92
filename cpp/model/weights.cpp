#include "attnvar/model/weights.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string_view>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/model/dequantize.h"
#include "attnvar/model/sha256.h"

namespace attnvar {
namespace {

namespace fs = std::filesystem;

std::string shape_str(const std::vector<int64_t>& s) {
  return fmt::format("({})", fmt::join(s, ", "));
}

// ---- GGUF metadata -> config ------------------------------------------------------------

int64_t require_int(const GgufFile& f, const std::string& key) {
  auto v = f.get_int(key);
  if (!v)
    throw FormatError(fmt::format("{}: required metadata key '{}' is missing", f.path(), key));
  return *v;
}

double require_float(const GgufFile& f, const std::string& key) {
  auto v = f.get_float(key);
  if (!v)
    throw FormatError(fmt::format("{}: required metadata key '{}' is missing", f.path(), key));
  return *v;
}

// llama.cpp's converter stores Llama 3 rope scaling as a `rope_freqs` tensor of per-
// frequency divisors instead of the HF parameters. Recover the parameters by taking the
// largest divisor as `factor` and checking the table against the llama3 formula with the
// standard low/high frequency factors; anything else is not representable.
void read_llama3_rope_freqs(const GgufFile& f, ModelConfig& c, const std::string& arch) {
  const GgufTensorInfo* t = f.find_tensor("rope_freqs.weight");
  if (!t) return;
  if (t->type != static_cast<uint32_t>(GgmlType::F32) || t->shape.size() != 1 ||
      t->shape[0] != c.head_dim / 2) {
    throw FormatError(fmt::format("{}: tensor 'rope_freqs.weight': expected F32 ({},), got {} {}",
                                  f.path(), c.head_dim / 2, ggml_type_name(t->type),
                                  shape_str(t->shape)));
  }
  std::vector<float> freqs(static_cast<size_t>(t->shape[0]));
  dequantize_row(t->type, f.tensor_data(*t), t->shape[0], freqs.data());
  const double factor = *std::max_element(freqs.begin(), freqs.end());
  if (factor == 1.0) return;  // all ones: no scaling
  RopeScaling s;
  s.type = RopeScalingType::kLlama3;
  s.factor = factor;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position_embeddings =
      f.get_int(arch + ".rope.scaling.original_context_length").value_or(8192);
  const double orig = static_cast<double>(s.original_max_position_embeddings);
  const double low_wavelen = orig / s.low_freq_factor;
  const double high_wavelen = orig / s.high_freq_factor;
  for (size_t i = 0; i < freqs.size(); ++i) {
    const double inv_freq = 1.0 / std::pow(c.rope_theta, 2.0 * static_cast<double>(i) /
                                                             static_cast<double>(c.head_dim));
    const double wavelen = 2 * M_PI / inv_freq;
    double want = 1.0;
    if (wavelen > low_wavelen) {
      want = factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth =
          (orig / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      want = 1.0 / ((1 - smooth) / factor + smooth);
    }
    if (std::abs(freqs[i] - want) > 1e-4 * want) {
      throw ConfigError(fmt::format(
          "{}: tensor 'rope_freqs.weight': entry {} = {} does not match llama3 rope scaling "
          "(factor {}, low_freq_factor 1, high_freq_factor 4, original context {}); other rope "
          "frequency tables are not supported",
          f.path(), i, freqs[i], factor, s.original_max_position_embeddings));
    }
  }
  c.rope_scaling = s;
}

// ---- name mapping ------------------------------------------------------------------------

// A bound every family meets (fused projections included): each decoder layer has at
// least one tensor of its own, so a file cannot describe more layers than it has tensors.
constexpr int64_t kMinTensorsPerLayer = 1;

const std::map<std::string, std::string>& block_names() {
  static const std::map<std::string, std::string> kNames = {
      {"attn_norm", "input_layernorm"},    {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},      {"attn_output", "self_attn.o_proj"},
      {"attn_q_norm", "self_attn.q_norm"}, {"attn_k_norm", "self_attn.k_norm"},
      {"ffn_gate", "mlp.gate_proj"},       {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},       {"attn_qkv", "self_attn.qkv_proj"},
      {"post_attention_norm", "post_attention_layernorm"},
      {"post_ffw_norm", "post_feedforward_layernorm"}};
  return kNames;
}

// gguf_to_hf_name's HF name as the family names it: Phi-3 keeps gate and up in llama.cpp's
// ffn_up (HF gate_up_proj, not up_proj); Gemma 2/3's ffn_norm is the norm before the MLP
// (pre_feedforward_layernorm), as their post_attention_layernorm is llama.cpp's
// post_attention_norm.
std::string family_hf_name(std::string hf, const std::string& gguf, const ModelConfig& c) {
  constexpr std::string_view kUp = ".mlp.up_proj.";
  if (const size_t at = hf.find(kUp); c.fused_projections() && at != std::string::npos) {
    hf.replace(at, kUp.size(), ".mlp.gate_up_proj.");
  }
  constexpr std::string_view kFfnNorm = ".ffn_norm.";
  constexpr std::string_view kPostAttn = ".post_attention_layernorm.";
  if (c.sandwich_norms() && gguf.find(kFfnNorm) != std::string::npos) {
    hf.replace(hf.find(kPostAttn), kPostAttn.size(), ".pre_feedforward_layernorm.");
  }
  return hf;
}

// The GGUF name of an HF tensor name, for error messages ("" when outside the mapping).
std::string hf_to_gguf_name(const std::string& hf, const ModelConfig& c) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  // model.layers.<layer>.<name>.<weight|bias>
  constexpr std::string_view kPrefix = "model.layers.";
  if (hf.rfind(kPrefix, 0) != 0) return "";
  const size_t layer_end = hf.find('.', kPrefix.size());
  const size_t suffix_dot = hf.rfind('.');
  if (layer_end == std::string::npos || suffix_dot <= layer_end) return "";
  const std::string layer = hf.substr(kPrefix.size(), layer_end - kPrefix.size());
  const std::string part = hf.substr(layer_end + 1, suffix_dot - layer_end - 1);
  const std::string suffix = hf.substr(suffix_dot + 1);
  std::string gguf_part;
  if (part == "pre_feedforward_layernorm") gguf_part = "ffn_norm";
  if (part == "post_attention_layernorm" && (c.post_norms() || c.sandwich_norms())) {
    gguf_part = "post_attention_norm";
  }
  if (!gguf_part.empty()) return fmt::format("blk.{}.{}.{}", layer, gguf_part, suffix);
  for (const auto& [gguf, name] : block_names()) {
    if (name == part) return fmt::format("blk.{}.{}.{}", layer, gguf, suffix);
  }
  if (part == "mlp.gate_up_proj") return fmt::format("blk.{}.ffn_up.{}", layer, suffix);
  return "";
}

// Tensors a file may carry that the engine does not use.
bool ignorable_gguf_tensor(const std::string& name) {
  return name == "rope_freqs.weight" ||  // folded into config.rope_scaling
         (name.rfind("blk.", 0) == 0 && name.find(".attn_rot_embd") != std::string::npos);
}

bool ignorable_hf_tensor(const std::string& name, const ModelConfig& c) {
  if (name.size() >= 21 && name.compare(name.size() - 21, 21, "rotary_emb.inv_freq") == 0) {
    return true;  // recomputed from the config
  }
  return c.tie_word_embeddings && name == "lm_head.weight";  // tied: the embedding is used
}

// ---- tensor conversion --------------------------------------------------------------------

at::ScalarType torch_dtype(const SafetensorsTensor& t) {
  static const std::map<std::string, at::ScalarType> kTypes = {{"F32", at::kFloat},
                                                               {"F16", at::kHalf},
                                                               {"BF16", at::kBFloat16},
                                                               {"F64", at::kDouble},
                                                               {"I64", at::kLong},
                                                               {"I32", at::kInt},
                                                               {"I16", at::kShort},
                                                               {"I8", at::kChar},
                                                               {"U8", at::kByte},
                                                               {"BOOL", at::kBool},
                                                               {"U16", at::kUInt16},
                                                               {"U32", at::kUInt32},
                                                               {"U64", at::kUInt64},
                                                               {"F8_E4M3", at::kFloat8_e4m3fn},
                                                               {"F8_E5M2", at::kFloat8_e5m2}};
  auto it = kTypes.find(t.dtype);
  if (it == kTypes.end()) {
    throw FormatError(
        fmt::format("{}: tensor '{}': dtype {} has no torch equivalent", t.file, t.name, t.dtype));
  }
  return it->second;
}

std::string most_common(const std::map<std::string, int64_t>& counts) {
  std::string best;
  int64_t n = -1;
  for (const auto& [name, c] : counts) {
    if (c > n) best = name, n = c;
  }
  return best;
}

std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "f32";
    case at::kBFloat16:
      return "bf16";
    case at::kHalf:
      return "f16";
    case at::kDouble:
      return "f64";
    default:
      return c10::toString(t);
  }
}

// Hash of the files' bytes concatenated in the given order (one file: its sha256sum).
std::string sha256_files(const std::vector<std::string>& files) {
  if (files.size() == 1) return sha256_file(files[0]);
  Sha256 h;
  std::vector<char> chunk(1 << 20);
  for (const auto& path : files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw MissingError(path + ": cannot open for hashing");
    while (in) {
      in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      h.update(chunk.data(), static_cast<size_t>(in.gcount()));
    }
  }
  return h.hex_digest();
}

void check_shape(const std::string& file, const std::string& tensor, const std::string& hf_name,
                 const std::vector<int64_t>& got, const std::vector<int64_t>& want) {
  if (got != want) {
    const std::string alias = tensor == hf_name ? "" : fmt::format(" (HF '{}')", hf_name);
    throw FormatError(fmt::format("{}: tensor '{}'{}: shape {} does not match the config's {}",
                                  file, tensor, alias, shape_str(got), shape_str(want)));
  }
}

Weights load_gguf(const std::string& path, at::ScalarType dtype, c10::Device device,
                  WeightMode mode) {
  // Shared: quantized blocks are views of the mapping and keep it open.
  const auto file = std::make_shared<GgufFile>(path);
  const GgufFile& f = *file;
  const bool keep_blocks =
      mode == WeightMode::kQuantized && dtype == at::kFloat && device.is_cpu();
  Weights w;
  w.config = config_from_gguf(f);
  const ModelConfig& c = w.config;
  const bool permuted = f.get_string("general.architecture").value_or("") == "llama";

  std::map<std::string, const GgufTensorInfo*> by_hf;
  std::map<std::string, int64_t> type_counts;
  for (const auto& t : f.tensors()) {
    type_counts[ggml_type_name(t.type)] += 1;
    if (ignorable_gguf_tensor(t.name)) continue;
    auto hf = gguf_to_hf_name(t.name);
    if (!hf) {
      throw FormatError(
          fmt::format("{}: tensor #{} '{}': unexpected tensor (no HF name for it in the "
                      "{} architecture)",
                      path, &t - f.tensors().data(), printable(t.name), c.model_type));
    }
    const std::string name = family_hf_name(*hf, t.name, c);
    if (auto [at, fresh] = by_hf.emplace(name, &t); !fresh) {
      throw FormatError(fmt::format("{}: tensors '{}' and '{}' are both HF '{}'", path,
                                    printable(at->second->name), printable(t.name), name));
    }
  }
  // A block count the file cannot hold fails before the expected list is built.
  const std::string arch = f.get_string("general.architecture").value_or("");
  if (c.num_hidden_layers > static_cast<int64_t>(f.tensors().size()) / kMinTensorsPerLayer) {
    throw FormatError(fmt::format(
        "{}: metadata key '{}.block_count': {} layers, but the file has only {} tensors (each "
        "layer has at least {})",
        path, arch, c.num_hidden_layers, f.tensors().size(), kMinTensorsPerLayer));
  }
  auto expected = expected_tensors(c);
  std::set<std::string> wanted;
  for (const auto& [hf, shape] : expected) {
    wanted.insert(hf);
    auto it = by_hf.find(hf);
    if (it == by_hf.end()) {
      throw MissingError(fmt::format("{}: tensor '{}' (HF '{}') is missing (the config implies it)",
                                     path, hf_to_gguf_name(hf, c), hf));
    }
    const GgufTensorInfo& t = *it->second;
    std::vector<int64_t> torch_shape(t.shape.rbegin(), t.shape.rend());
    // GGUF drops trailing unit dims of ne; 1-D tensors are already in HF shape.
    check_shape(path, printable(t.name), hf, torch_shape, shape);
    if (!ggml_can_dequantize(t.type)) {
      throw FormatError(fmt::format("{}: tensor '{}': type {} cannot be dequantized", path,
                                    printable(t.name), ggml_type_name(t.type)));
    }
  }
  for (const auto& [hf, t] : by_hf) {
    if (!wanted.count(hf)) {
      throw FormatError(
          fmt::format("{}: tensor '{}': unexpected for this config (HF '{}')", path,
                      printable(t->name), hf));
    }
  }
  int64_t kept = 0;
  for (const auto& [hf, shape] : expected) {
    const GgufTensorInfo& t = *by_hf.at(hf);
    if (keep_blocks && shape.size() == 2 && ggml_type_projectable(t.type)) {
      const int64_t row_bytes = static_cast<int64_t>(ggml_nbytes(t.type, shape[1]));
      at::Tensor blocks = at::from_blob(
          const_cast<uint8_t*>(f.tensor_data(t)), {shape[0], row_bytes},
          [file](void*) {}, at::TensorOptions().dtype(at::kByte));
      if (permuted && t.name.find(".attn_q.") != std::string::npos) {
        blocks = unpermute_llama_qk(blocks, c.num_attention_heads);  // rows move whole
        f.drop_tensor_pages(t);  // copied: the file's pages are no longer used
      } else if (permuted && t.name.find(".attn_k.") != std::string::npos) {
        blocks = unpermute_llama_qk(blocks, c.num_key_value_heads);
        f.drop_tensor_pages(t);
      }
      w.quantized.emplace(hf, QuantizedMatrix{blocks, t.type, shape[1]});
      ++kept;
      continue;
    }
    at::Tensor x = gguf_tensor_to_f32(f, t);
    f.drop_tensor_pages(t);  // decoded: the file's pages are no longer used
    if (permuted) {
      if (t.name.find(".attn_q.") != std::string::npos) {
        x = unpermute_llama_qk(x, c.num_attention_heads);
      } else if (t.name.find(".attn_k.") != std::string::npos) {
        x = unpermute_llama_qk(x, c.num_key_value_heads);
      }
    }
    // llama.cpp stores Gemma's norm weights with the 1 of (1 + w) added; HF's w is without.
    constexpr std::string_view kNorm = "norm.weight";
    if (c.unit_offset_norms() && hf.size() >= kNorm.size() &&
        hf.compare(hf.size() - kNorm.size(), kNorm.size(), kNorm) == 0) {
      x = x - 1.0;
    }
    w.tensors.emplace(hf, x.to(device, dtype));
  }
  w.identity.path = path;
  w.identity.format = "gguf";
  w.identity.sha256 = sha256_file(path);
  w.identity.quantization = most_common(type_counts);
  w.identity.note = kept > 0 ? fmt::format("{} weights kept quantized, the rest dequantized "
                                           "to f32", kept)
                             : "dequantized to f32";
  if (dtype != at::kFloat) w.identity.note += ", cast to " + dtype_name(dtype);
  return w;
}

Weights load_safetensors(const std::string& path, at::ScalarType dtype, c10::Device device) {
  const fs::path p(path);
  std::error_code ec;
  const fs::path dir = fs::is_directory(p, ec) ? p : p.parent_path();
  Weights w;
  w.config = load_hf_config(dir.empty() ? "." : dir.string());
  const ModelConfig& c = w.config;
  SafetensorsModel model(path);

  // As for GGUF: checked before the expected list is built.
  const size_t n_tensors = model.tensors().size();
  if (c.num_hidden_layers > static_cast<int64_t>(n_tensors) / kMinTensorsPerLayer) {
    throw FormatError(fmt::format(
        "{}/config.json: config field 'num_hidden_layers': {} layers, but {} has only {} "
        "tensors (each layer has at least {})",
        dir.empty() ? "." : dir.string(), c.num_hidden_layers, path, n_tensors,
        kMinTensorsPerLayer));
  }
  auto expected = expected_tensors(c);
  std::set<std::string> wanted;
  for (const auto& [hf, shape] : expected) {
    wanted.insert(hf);
    const SafetensorsTensor& t = model.at(hf);
    check_shape(t.file, hf, hf, t.shape, shape);
    if (t.dtype != "F32" && t.dtype != "F16" && t.dtype != "BF16" && t.dtype != "F64") {
      throw FormatError(
          fmt::format("{}: tensor '{}': dtype {} is not a float type", t.file, hf, t.dtype));
    }
  }
  std::map<std::string, int64_t> dtype_counts;
  for (const SafetensorsTensor* t : model.tensors()) {
    if (!wanted.count(t->name) && !ignorable_hf_tensor(t->name, c)) {
      throw FormatError(
          fmt::format("{}: tensor '{}': unexpected for this config", t->file, t->name));
    }
    if (wanted.count(t->name)) dtype_counts[t->dtype] += 1;
  }
  for (const auto& [hf, shape] : expected) {
    // Through f32, as the GGUF path does; exact for every float dtype loaded here.
    at::Tensor x = safetensors_to_tensor(model.at(hf)).to(at::kFloat);
    w.tensors.emplace(hf, x.to(device, dtype));
  }
  w.identity.path = path;
  w.identity.format = "safetensors";
  w.identity.sha256 = sha256_files(model.files());
  w.identity.quantization = most_common(dtype_counts);
  std::string source;
  for (const auto& [name, n] : dtype_counts) source += (source.empty() ? "" : "/") + name;
  if (source != "F32" || dtype != at::kFloat) {
    w.identity.note = fmt::format("converted from {} to {}", source, dtype_name(dtype));
  }
  return w;
}

}  // namespace

bool is_gguf_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;  // opening a FIFO would block
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

bool is_gguf_model(const std::string& path) {
  std::error_code ec;
  return !fs::is_directory(path, ec) &&
         (fs::path(path).extension() == ".gguf" || is_gguf_file(path));
}

std::optional<std::string> gguf_to_hf_name(const std::string& name) {
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  // blk.<layer>.<name>.<weight|bias>, parsed by hand: the name comes from the file, and
  // std::regex recurses per character (a long name overflowed the stack).
  constexpr std::string_view kPrefix = "blk.";
  if (name.size() > kMaxGgufTensorName || name.rfind(kPrefix, 0) != 0) return std::nullopt;
  size_t pos = kPrefix.size();
  const size_t digits = pos;
  while (pos < name.size() && name[pos] >= '0' && name[pos] <= '9') ++pos;
  // A canonical decimal: no leading zero (blk.01 must not alias blk.1), and it fits.
  if (pos == digits || pos - digits > 9 || (name[digits] == '0' && pos - digits > 1)) {
    return std::nullopt;
  }
  int64_t layer = 0;
  if (std::from_chars(name.data() + digits, name.data() + pos, layer).ec != std::errc()) {
    return std::nullopt;
  }
  if (pos >= name.size() || name[pos] != '.') return std::nullopt;
  const std::string_view rest = std::string_view(name).substr(pos + 1);
  const size_t dot = rest.rfind('.');
  if (dot == std::string_view::npos) return std::nullopt;
  const std::string_view part = rest.substr(0, dot);
  const std::string_view suffix = rest.substr(dot + 1);
  if (suffix != "weight" && suffix != "bias") return std::nullopt;
  auto it = block_names().find(std::string(part));
  if (it == block_names().end()) return std::nullopt;
  return fmt::format("model.layers.{}.{}.{}", layer, it->second, suffix);
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(const ModelConfig& c) {
  const int64_t h = c.hidden_size, v = c.vocab_size, ffn = c.intermediate_size;
  const int64_t q_rows = c.num_attention_heads * c.head_dim;
  const int64_t kv_rows = c.num_key_value_heads * c.head_dim;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {v, h}});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    if (!c.post_norms()) out.push_back({p + "input_layernorm.weight", {h}});
    if (c.sandwich_norms()) out.push_back({p + "pre_feedforward_layernorm.weight", {h}});
    if (c.fused_projections()) {
      out.push_back({p + "self_attn.qkv_proj.weight", {q_rows + 2 * kv_rows, h}});
    } else {
      out.push_back({p + "self_attn.q_proj.weight", {q_rows, h}});
      out.push_back({p + "self_attn.k_proj.weight", {kv_rows, h}});
      out.push_back({p + "self_attn.v_proj.weight", {kv_rows, h}});
    }
    out.push_back({p + "self_attn.o_proj.weight", {h, q_rows}});
    if (c.qkv_bias()) {
      out.push_back({p + "self_attn.q_proj.bias", {q_rows}});
      out.push_back({p + "self_attn.k_proj.bias", {kv_rows}});
      out.push_back({p + "self_attn.v_proj.bias", {kv_rows}});
    }
    if (c.o_bias()) out.push_back({p + "self_attn.o_proj.bias", {h}});
    if (c.qk_norm()) {
      out.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
      out.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
    }
    if (c.qk_norm_whole()) {
      out.push_back({p + "self_attn.q_norm.weight", {q_rows}});
      out.push_back({p + "self_attn.k_norm.weight", {kv_rows}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    if (c.post_norms() || c.sandwich_norms()) {
      out.push_back({p + "post_feedforward_layernorm.weight", {h}});
    }
    if (c.fused_projections()) {
      out.push_back({p + "mlp.gate_up_proj.weight", {2 * ffn, h}});
    } else {
      out.push_back({p + "mlp.gate_proj.weight", {ffn, h}});
      out.push_back({p + "mlp.up_proj.weight", {ffn, h}});
    }
    out.push_back({p + "mlp.down_proj.weight", {h, ffn}});
    if (c.mlp_bias) {
      out.push_back({p + "mlp.gate_proj.bias", {ffn}});
      out.push_back({p + "mlp.up_proj.bias", {ffn}});
      out.push_back({p + "mlp.down_proj.bias", {h}});
    }
  }
  out.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {v, h}});
  return out;
}

namespace {

// What llama.cpp's conventions fix for Gemma files beyond the common keys: GeGLU; Gemma 2's
// soft-capping keys; the local/global layer pattern (Gemma 2 alternates starting with a
// sliding layer, Gemma 3 slides on all but every sliding_window_pattern-th, 6 unless the
// file says, as a period or a per-layer list); Gemma 3's local RoPE base, 10000; and the
// query scale, which GGUF does not carry: head_dim^-1/2, except for the 27B models
// (46 layers in Gemma 2, 62 in Gemma 3), scaled by (hidden / heads)^-1/2 as their
// query_pre_attn_scalar says.
void read_gemma_gguf(const GgufFile& f, ModelConfig& c, const std::string& arch) {
  const std::string a = arch + ".";
  c.hidden_act = "gelu_pytorch_tanh";
  if (arch == "gemma") return;
  c.attn_logit_softcapping = f.get_float(a + "attn_logit_softcapping");
  c.final_logit_softcapping = f.get_float(a + "final_logit_softcapping");
  const std::string pattern_key = a + "attention.sliding_window_pattern";
  if (auto period = f.get_int(pattern_key)) {
    c.sliding_window_pattern = *period;
  } else if (auto per_layer = f.get_int_array(pattern_key)) {
    for (int64_t v : *per_layer) c.layer_types.push_back(v ? LayerKind::kSliding : LayerKind::kFull);
  }
  if (arch == "gemma3") c.rope_local_theta = 10000.0;
  const bool is_27b = c.num_hidden_layers == (arch == "gemma2" ? 46 : 62);
  if (is_27b && c.num_attention_heads > 0) {
    c.query_pre_attn_scalar =
        static_cast<double>(c.hidden_size) / static_cast<double>(c.num_attention_heads);
  }
}

}  // namespace

ModelConfig config_from_gguf(const GgufFile& f) {
  auto arch_value = f.get_string("general.architecture");
  if (!arch_value) {
    throw FormatError(
        fmt::format("{}: required metadata key 'general.architecture' is missing", f.path()));
  }
  const std::string arch = *arch_value;
  ModelConfig c;
  if (arch == "llama" || arch == "qwen2" || arch == "qwen3" || arch == "phi3" ||
      arch == "olmo2" || arch == "gemma" || arch == "gemma2") {
    c.model_type = arch;
  } else if (arch == "gemma3") {
    c.model_type = "gemma3_text";  // a GGUF holds the text model
  } else {
    throw ConfigError(fmt::format(
        "{}: metadata key 'general.architecture': '{}' is not supported (supported: llama, "
        "qwen2, qwen3, phi3, olmo2, gemma, gemma2, gemma3)",
        f.path(), printable(arch)));
  }
  const std::string a = arch + ".";
  c.num_hidden_layers = require_int(f, a + "block_count");
  if (c.num_hidden_layers > kMaxHiddenLayers) {  // before validate(), to name the GGUF key
    throw ConfigError(fmt::format("{}: metadata key '{}block_count': {} exceeds the supported "
                                  "maximum of {} layers",
                                  f.path(), a, c.num_hidden_layers, kMaxHiddenLayers));
  }
  c.hidden_size = require_int(f, a + "embedding_length");
  c.intermediate_size = require_int(f, a + "feed_forward_length");
  c.num_attention_heads = require_int(f, a + "attention.head_count");
  c.num_key_value_heads = f.get_int(a + "attention.head_count_kv").value_or(c.num_attention_heads);
  c.rms_norm_eps = require_float(f, a + "attention.layer_norm_rms_epsilon");
  c.max_position_embeddings = require_int(f, a + "context_length");
  c.rope_theta = f.get_float(a + "rope.freq_base").value_or(10000.0);
  c.head_dim = f.get_int(a + "attention.key_length").value_or(0);
  if (auto vl = f.get_int(a + "attention.value_length"); vl && c.head_dim && *vl != c.head_dim) {
    throw ConfigError(
        fmt::format("{}: metadata key '{}attention.value_length': {} differs from "
                    "key_length {} (not supported)",
                    f.path(), a, *vl, c.head_dim));
  }
  if (auto n = f.array_size("tokenizer.ggml.tokens")) {
    c.vocab_size = static_cast<int64_t>(*n);
  } else if (auto vs = f.get_int(a + "vocab_size")) {
    c.vocab_size = *vs;
  } else {
    throw FormatError(fmt::format(
        "{}: required metadata key 'tokenizer.ggml.tokens' (or '{}vocab_size') is missing",
        f.path(), a));
  }
  if (auto sw = f.get_int(a + "attention.sliding_window"); sw && *sw > 0) c.sliding_window = *sw;
  if (arch == "gemma" || arch == "gemma2" || arch == "gemma3") read_gemma_gguf(f, c, arch);
  if (auto bos = f.get_int("tokenizer.ggml.bos_token_id")) c.bos_token_id = *bos;
  if (auto eos = f.get_int("tokenizer.ggml.eos_token_id")) c.eos_token_ids.push_back(*eos);
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  // llama/qwen3 GGUF files carry biases only when the HF model had attention_bias.
  if (arch != "qwen2" && f.find_tensor("blk.0.attn_q.bias")) c.attention_bias = true;
  if (f.find_tensor("blk.0.ffn_up.bias")) c.mlp_bias = true;

  if (auto type = f.get_string(a + "rope.scaling.type"); type && *type != "none") {
    if (*type != "linear") {
      throw ConfigError(fmt::format(
          "{}: metadata key '{}rope.scaling.type': '{}' is not supported (supported: none, "
          "linear)",
          f.path(), a, printable(*type)));
    }
    c.rope_scaling.type = RopeScalingType::kLinear;
    c.rope_scaling.factor = require_float(f, a + "rope.scaling.factor");
  }
  c.validate(f.path());
  if (auto rd = f.get_int(a + "rope.dimension_count"); rd && *rd != c.head_dim) {
    throw ConfigError(
        fmt::format("{}: metadata key '{}rope.dimension_count': {} differs from "
                    "head_dim {} (partial rotary is not supported)",
                    f.path(), a, *rd, c.head_dim));
  }
  if (c.rope_scaling.type == RopeScalingType::kNone) read_llama3_rope_freqs(f, c, arch);
  return c;
}

at::Tensor gguf_tensor_to_f32(const GgufFile& f, const GgufTensorInfo& t) {
  std::vector<int64_t> shape(t.shape.rbegin(), t.shape.rend());  // torch order: ne reversed
  at::Tensor out = at::empty(shape, at::kFloat);
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int64_t row = t.shape[0];  // ne[0]: a whole number of blocks (checked at open)
  const uint64_t row_bytes = ggml_nbytes(t.type, row);
  const uint8_t* src = f.tensor_data(t);
  float* dst = out.data_ptr<float>();
  try {
    at::parallel_for(0, n / row, 16, [&](int64_t begin, int64_t end) {
      dequantize_row(t.type, src + begin * row_bytes, (end - begin) * row, dst + begin * row);
    });
  } catch (const FormatError& e) {
    throw FormatError(fmt::format("{}: tensor '{}': {}", f.path(), printable(t.name), e.what()));
  }
  return out;
}

at::Tensor unpermute_llama_qk(const at::Tensor& w, int64_t n_head) {
  const int64_t rows = w.size(0);
  if (n_head <= 0 || rows % (2 * n_head) != 0) {
    throw FormatError(
        fmt::format("cannot un-permute {} rows into {} heads of even size", rows, n_head));
  }
  // (n_head, head_dim/2, 2, rest...) -> (n_head, 2, head_dim/2, rest...)
  std::vector<int64_t> split = {n_head, rows / n_head / 2, 2};
  for (int64_t d = 1; d < w.dim(); ++d) split.push_back(w.size(d));
  return w.reshape(split).transpose(1, 2).reshape(w.sizes()).contiguous();
}

at::Tensor safetensors_to_tensor(const SafetensorsTensor& t) {
  // Copy: the mapping is read-only and its offsets need not be aligned for the dtype.
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(torch_dtype(t)));
  if (t.nbytes > 0) std::memcpy(out.data_ptr(), t.data, t.nbytes);
  return out;
}

Weights load_weights(const std::string& path, at::ScalarType dtype, c10::Device device,
                     WeightMode mode) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw MissingError(path + ": no such file or directory");
  if (!fs::is_directory(path, ec) && !fs::is_regular_file(path, ec)) {
    // A FIFO, socket or device: reading one could block or never end.
    throw FormatError(path + ": not a model file or directory (not a regular file)");
  }
  // A .gguf name or GGUF magic goes to the GGUF reader, which names a wrong magic.
  if (is_gguf_model(path)) return load_gguf(path, dtype, device, mode);
  return load_safetensors(path, dtype, device);
}

}  // namespace attnvar

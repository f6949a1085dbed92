// Loading model weights into torch tensors under Hugging Face names.
//
// Sources: an HF directory (config.json + model.safetensors or a sharded index) or a GGUF
// file (metadata -> config; quantized tensors dequantized to f32, or kept in their blocks
// with WeightMode::kQuantized). Every tensor the
// config implies is required and shape-checked; the result uses HF names and HF shapes
// (linear weights are (out_features, in_features)), so the engine sees one layout
// whatever the file. GGUF files of the `llama` architecture store attn_q/attn_k rows
// permuted for llama.cpp's interleaved RoPE; they are un-permuted here exactly as
// transformers' GGUF loader does, giving HF's rotate_half layout.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attnvar/model/config.h"
#include "attnvar/model/gguf.h"
#include "attnvar/model/quantized_matrix.h"
#include "attnvar/model/safetensors.h"

namespace attnvar {

// What was loaded, for provenance in run files.
struct ModelIdentity {
  std::string path;
  std::string format;        // "gguf" | "safetensors"
  std::string sha256;        // of the weights file; of the shards' bytes concatenated in
                             // sorted file-name order when sharded
  std::string quantization;  // most common tensor type in the file, e.g. "Q4_1", "BF16", "F32"
  std::string note;          // e.g. "dequantized to f32", "211 weights kept quantized, ..."
};

struct Weights {
  ModelConfig config;
  // HF names (model.layers.0.self_attn.q_proj.weight, ...), HF shapes (out, in).
  std::map<std::string, at::Tensor> tensors;
  // With WeightMode::kQuantized: the 2-D weights kept in their GGUF blocks, by HF name (not
  // also in `tensors`); the blocks are views of the mapped file, which they keep open.
  std::map<std::string, QuantizedMatrix> quantized;
  ModelIdentity identity;
};

// How a GGUF file's quantized weights are held: kept in their blocks (kQuantized: projected
// by qgemv_rows, bit for bit the float32 results at a fraction of the memory), or decoded
// to float32 at load (kFloat32). kQuantized applies to f32 models on the CPU and to the
// types ggml_type_projectable accepts; other tensors are decoded either way.
enum class WeightMode { kQuantized, kFloat32 };

// Loads `path`: an HF model directory, a .safetensors / .safetensors.index.json file
// inside one (config.json is read from its directory), or a .gguf file. Tensors are
// decoded to f32, then cast to `dtype` and moved to `device`. Errors: MissingError
// (file or tensor absent), FormatError (malformed file, wrong tensor shape or type,
// unexpected tensor), ConfigError (unsupported architecture or option); each names the
// file and the tensor or field.
// Whether ``path`` is read as a GGUF model: not a directory, and a .gguf name or a
// regular file starting with the GGUF magic. Weights and tokenizer use this one rule, so
// both come from the same file whatever its name.
bool is_gguf_model(const std::string& path);
// Whether ``path`` is a regular file starting with the GGUF magic (false for a FIFO,
// which is never opened).
bool is_gguf_file(const std::string& path);

Weights load_weights(const std::string& path, at::ScalarType dtype = at::kFloat,
                     c10::Device device = c10::kCPU, WeightMode mode = WeightMode::kFloat32);

// Model configuration from GGUF metadata (`general.architecture` llama | qwen2 | qwen3 and
// its `{arch}.*` keys; vocab size from tokenizer.ggml.tokens; tie_word_embeddings when
// output.weight is absent). FormatError naming the file and key for a missing required
// key; ConfigError for an unsupported architecture or rope scaling.
ModelConfig config_from_gguf(const GgufFile& f);

// HF name of a GGUF tensor name (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.
// q_proj.weight`); nullopt for names outside the llama family's mapping, for names longer
// than kMaxGgufTensorName, and for a layer number that is not a canonical decimal of at most
// 9 digits (no leading zeros). Parsed by hand, in time and stack linear in the name.
std::optional<std::string> gguf_to_hf_name(const std::string& gguf_name);

// The tensors `config` requires, with their HF shapes, in a stable order.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_tensors(
    const ModelConfig& config);

// A GGUF tensor dequantized to f32, in the file's row order with torch's dimension order
// (GGUF's shape reversed), before any un-permutation; on the CPU.
at::Tensor gguf_tensor_to_f32(const GgufFile& f, const GgufTensorInfo& t);

// Reverses llama.cpp's q/k row permutation of one projection weight or bias (rows =
// n_head * head_dim first): within each head, rows (2i, 2i+1) go back to (i, i + d/2).
at::Tensor unpermute_llama_qk(const at::Tensor& w, int64_t n_head);

// A copy of a safetensors tensor as a CPU tensor of its own dtype.
at::Tensor safetensors_to_tensor(const SafetensorsTensor& t);

}  // namespace attnvar

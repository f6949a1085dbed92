// The library's entry point: a model file or directory -> decoder + tokenizer + identity.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <string>
#include <vector>

#include "attnvar/model/llama.h"
#include "attnvar/model/weights.h"
#include "attnvar/tokenizer/tokenizer.h"

namespace attnvar {

struct LoadedModel {
  std::unique_ptr<LlamaModel> decoder;
  std::unique_ptr<Tokenizer> tokenizer;  // null for a directory without tokenizer.json
  ModelIdentity identity;                // file hash, quantisation, how weights are held
  // What generation stops on by default: the config's eos ids, then the tokenizer's eos
  // and end-of-turn ids (no duplicates).
  std::vector<int64_t> eos_ids;
};

// `path`: a .gguf file (weights, config and tokenizer from its metadata) or an HF
// directory (config.json, safetensors, tokenizer.json when present). Errors name the
// file and field (MissingError, FormatError, ConfigError).
// `weights`: how a GGUF file's quantized weights are held (WeightMode); float32 or another
// device always decodes them. The two modes compute the same numbers bit for bit.
LoadedModel load_model(const std::string& path, at::ScalarType dtype = at::kFloat,
                       c10::Device device = c10::kCPU,
                       WeightMode weights = WeightMode::kQuantized);

// The tokenizer alone: a .gguf file, a tokenizer.json, or a directory holding one;
// nullptr for a directory without tokenizer.json.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace attnvar

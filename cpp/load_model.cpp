#include "attnvar/load_model.h"

#include <algorithm>
#include <filesystem>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <fmt/format.h>

#include "attnvar/error.h"
#include "attnvar/model/weights.h"

namespace attnvar {
namespace fs = std::filesystem;

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  const fs::path p(path);
  if (!fs::exists(p)) throw MissingError(path + ": no such file or directory");
  // The rule load_weights uses (content, not name): tokenizer and weights from one file.
  if (is_gguf_model(path)) return std::make_unique<Tokenizer>(Tokenizer::from_gguf_file(p));
  if (fs::is_directory(p)) {
    if (!fs::exists(p / "tokenizer.json")) return nullptr;
    return std::make_unique<Tokenizer>(Tokenizer::from_json_file(p / "tokenizer.json"));
  }
  if (p.filename() == "tokenizer.json" || p.extension() == ".json") {
    return std::make_unique<Tokenizer>(Tokenizer::from_json_file(p));
  }
  // A weights file inside an HF directory: the tokenizer sits beside it.
  return load_tokenizer(p.parent_path().string());
}

LoadedModel load_model(const std::string& path, at::ScalarType dtype, c10::Device device,
                       WeightMode weights) {
  Weights w = load_weights(path, dtype, device, weights);
  LoadedModel m;
  m.identity = w.identity;
  // Handed over: the decoder frees each layer's q/k/v and gate/up as it fuses them, so the
  // fused weights are the only copy and the peak stays one layer above the weights.
  m.decoder = std::make_unique<LlamaModel>(w.config, std::move(w.tensors), path, dtype, device,
                                           std::move(w.quantized));
  w.tensors.clear();
  m.tokenizer = load_tokenizer(path);
  if (m.tokenizer && m.tokenizer->vocab_size() > w.config.vocab_size) {
    // Ids the embedding has no row for: a tokenizer from another model beside the weights.
    throw ConfigError(fmt::format(
        "{}: the tokenizer has {} tokens but the model's embedding has {} rows (vocab_size); "
        "the tokenizer belongs to another model",
        path, m.tokenizer->vocab_size(), w.config.vocab_size));
  }
  m.eos_ids = w.config.eos_token_ids;
  if (m.tokenizer) {
    for (int32_t id : m.tokenizer->eos_ids()) {
      if (std::find(m.eos_ids.begin(), m.eos_ids.end(), id) == m.eos_ids.end()) {
        m.eos_ids.push_back(id);
      }
    }
  }
#if defined(__GLIBC__)
  // Dequantization and fusion free hundreds of MB in blocks glibc keeps in its heap (a
  // freed mmap'd block raises the mmap threshold, so later blocks come from the heap);
  // hand the free pages back, or they stay resident (~75 MB for SmolLM2-135M).
  malloc_trim(0);
#endif
  return m;
}

}  // namespace attnvar

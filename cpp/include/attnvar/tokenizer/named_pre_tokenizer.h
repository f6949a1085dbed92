// The pre-tokenizers a GGUF file names in `tokenizer.ggml.pre` (llama.cpp's names), each
// expressed as the HF pipeline of the model's original tokenizer.json.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "attnvar/tokenizer/pre_tokenizer.h"

namespace attnvar {

struct NamedPreTokenizer {
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  // Llama 3 and Tekken vocabularies emit a word that is itself a token whole (HF's
  // ignore_merges; llama.cpp sets it for these names).
  bool ignore_merges = false;
};

// ConfigError naming `origin` and listing the supported names when `name` is unknown.
NamedPreTokenizer named_pre_tokenizer(std::string_view name, std::string_view origin);

// Every name named_pre_tokenizer accepts.
std::vector<std::string> named_pre_tokenizer_names();

// Split regexes of the byte-level families, as their tokenizer.json files write them.
inline constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr std::string_view kTekkenPattern =
    R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

}  // namespace attnvar

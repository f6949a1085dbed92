#include "attnvar/tokenizer/named_pre_tokenizer.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "attnvar/error.h"

namespace attnvar {

namespace {

enum class Layout {
  kGpt2,    // ByteLevel with the GPT-2 regex
  kSmollm,  // each digit alone, then ByteLevel with the GPT-2 regex (StarCoder's layout)
  kLlama3,  // the Llama 3 regex, then ByteLevel without a regex
  kQwen2,
  kTekken,
};

struct Entry {
  std::string_view name;
  Layout layout;
  bool ignore_merges;
};

// llama.cpp groups these names by regex (llama-vocab.cpp); where a group shares a regex, the
// models' tokenizer.json files declare the HF pipeline written here.
constexpr Entry kEntries[] = {
    {"gpt-2", Layout::kGpt2, false},
    {"phi-2", Layout::kGpt2, false},
    {"roberta-bpe", Layout::kGpt2, false},
    {"mpt", Layout::kGpt2, false},
    {"olmo", Layout::kGpt2, false},
    {"jais", Layout::kGpt2, false},
    {"smollm", Layout::kSmollm, false},
    {"starcoder", Layout::kSmollm, false},
    {"refact", Layout::kSmollm, false},
    {"command-r", Layout::kSmollm, false},
    {"codeshell", Layout::kSmollm, false},
    {"exaone", Layout::kSmollm, false},
    {"llama3", Layout::kLlama3, true},
    {"llama-v3", Layout::kLlama3, true},
    {"llama-bpe", Layout::kLlama3, true},
    {"falcon3", Layout::kLlama3, true},
    {"pixtral", Layout::kLlama3, true},
    {"dbrx", Layout::kLlama3, false},
    {"smaug-bpe", Layout::kLlama3, false},
    {"qwen2", Layout::kQwen2, false},
    {"deepseek-r1-qwen", Layout::kQwen2, false},
    {"stablelm2", Layout::kQwen2, false},
    {"megrez", Layout::kQwen2, false},
    {"tekken", Layout::kTekken, true},
};

std::unique_ptr<PreTokenizer> split_then_bytes(std::string_view pattern, std::string_view name) {
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  steps.push_back(std::make_unique<SplitPreTokenizer>(
      Regex(pattern, fmt::format("pre-tokenizer {:?}", std::string(name))),
      SplitBehavior::kIsolated, false));
  steps.push_back(std::make_unique<ByteLevelPreTokenizer>(false, false));
  return std::make_unique<SequencePreTokenizer>(std::move(steps));
}

}  // namespace

NamedPreTokenizer named_pre_tokenizer(std::string_view name, std::string_view origin) {
  const auto* entry = std::find_if(std::begin(kEntries), std::end(kEntries),
                                   [&](const Entry& e) { return e.name == name; });
  if (entry == std::end(kEntries)) {
    throw ConfigError(fmt::format("{}: tokenizer.ggml.pre {:?} is not supported (supported: {})",
                                  origin, std::string(name),
                                  fmt::join(named_pre_tokenizer_names(), ", ")));
  }
  NamedPreTokenizer out;
  out.ignore_merges = entry->ignore_merges;
  switch (entry->layout) {
    case Layout::kGpt2:
      out.pre_tokenizer = std::make_unique<ByteLevelPreTokenizer>(false, true);
      break;
    case Layout::kSmollm: {
      std::vector<std::unique_ptr<PreTokenizer>> steps;
      steps.push_back(std::make_unique<DigitsPreTokenizer>(true));
      steps.push_back(std::make_unique<ByteLevelPreTokenizer>(false, true));
      out.pre_tokenizer = std::make_unique<SequencePreTokenizer>(std::move(steps));
      break;
    }
    case Layout::kLlama3:
      out.pre_tokenizer = split_then_bytes(kLlama3Pattern, name);
      break;
    case Layout::kQwen2:
      out.pre_tokenizer = split_then_bytes(kQwen2Pattern, name);
      break;
    case Layout::kTekken:
      out.pre_tokenizer = split_then_bytes(kTekkenPattern, name);
      break;
  }
  return out;
}

std::vector<std::string> named_pre_tokenizer_names() {
  std::vector<std::string> names;
  for (const Entry& e : kEntries) names.emplace_back(e.name);
  return names;
}

}  // namespace attnvar

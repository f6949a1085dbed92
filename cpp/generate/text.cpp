#include "attnvar/generate/text.h"

#include <fmt/format.h>

#include <cstdint>
#include <limits>

#include "attnvar/error.h"
#include "attnvar/tokenizer/tokenizer.h"

namespace attnvar {
namespace {

std::string piece_of(const Tokenizer& tokenizer, int64_t id) {
  if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
    throw ConfigError(fmt::format("{}: token id {} has no token (vocabulary has {} ids)",
                                  tokenizer.origin(), id, tokenizer.vocab_size()));
  }
  return tokenizer.piece(static_cast<int32_t>(id));
}

// The prompt's pieces, without a leading BOS.
std::string prompt_text(const Tree& tree, const Tokenizer& tokenizer) {
  size_t start = 0;
  const auto bos = tokenizer.bos_id();
  if (!tree.prompt.empty() && bos && tree.prompt.front() == *bos) start = 1;
  std::string out;
  for (size_t i = start; i < tree.prompt.size(); ++i) out += piece_of(tokenizer, tree.prompt[i]);
  return out;
}

}  // namespace

std::string bracketed_text(const Tree& tree, const Tokenizer& tokenizer) {
  std::string out = prompt_text(tree, tokenizer);
  for (const TreeStep& step : tree.steps) {
    if (step.members.size() == 1) {
      out += piece_of(tokenizer, step.members.front().token_id);
      continue;
    }
    out += '[';
    for (size_t r = 0; r < step.members.size(); ++r) {
      if (r) out += '/';
      out += piece_of(tokenizer, step.members[r].token_id);
    }
    out += ']';
  }
  return out;
}

std::string top_path_text(const Tree& tree, const Tokenizer& tokenizer) {
  std::string out = prompt_text(tree, tokenizer);
  for (const TreeStep& step : tree.steps) {
    if (!step.members.empty()) out += piece_of(tokenizer, step.members.front().token_id);
  }
  return out;
}

}  // namespace attnvar

// Added tokens (special tokens such as "<|im_start|>", and user-defined ones): matched whole in
// the input before anything else runs, so their text never reaches the BPE model. Follows HF
// tokenizers' AddedVocabulary: leftmost-longest matching; tokens with normalized=false are
// matched in the raw text, tokens with normalized=true in the normalized text of what is left;
// single_word, lstrip and rstrip as HF defines them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "attnvar/tokenizer/normalizer.h"

namespace attnvar {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;      // skipped by decode(skip_special=true)
  bool normalized = false;   // matched after normalization (and its content normalized too)
  bool lstrip = false;       // swallows whitespace on its left
  bool rstrip = false;       // swallows whitespace on its right
  bool single_word = false;  // only matches when not inside a word
};

class AddedTokenMatcher {
 public:
  // A stretch of the text: an added token (id >= 0) or plain text (id == -1).
  struct Segment {
    std::size_t begin;
    std::size_t end;
    int32_t id;
  };

  // `normalizer` (may be null) normalizes the content of normalized=true tokens.
  AddedTokenMatcher(const std::vector<AddedToken>& tokens, const Normalizer* normalizer);
  ~AddedTokenMatcher();
  AddedTokenMatcher(AddedTokenMatcher&&) noexcept;
  AddedTokenMatcher& operator=(AddedTokenMatcher&&) noexcept;

  // Splits valid UTF-8 text at the tokens of one set: raw (normalized=false) or normalized.
  std::vector<Segment> split(std::string_view text, bool normalized_set) const;

  bool has_normalized_tokens() const;

 private:
  struct Trie;
  std::unique_ptr<Trie> raw_;
  std::unique_ptr<Trie> normalized_;
};

}  // namespace attnvar

// Pre-tokenizers: split normalized text into the words the BPE model encodes one by one
// (HF tokenizers' `pre_tokenizer`). Each step maps the current list of pieces to a finer one,
// so a Sequence applies its second step inside the pieces of the first, as HF does.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "attnvar/tokenizer/regex.h"

namespace attnvar {

// A piece of the input on its way to the BPE model.
struct PreToken {
  std::string text;
  // Whether the piece begins at offset 0 of the original input: Metaspace's "first" scheme
  // prepends its marker only there (not after an added token).
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits; empty pieces are dropped.
  virtual void split(std::vector<PreToken>& pieces) const = 0;
  // Whether the pieces come out as raw bytes for a byte-level BPE model (the step that does so
  // must be the last one; the alphabet mapping itself is folded into the model).
  virtual bool is_byte_level() const { return false; }
};

// What happens to a matched delimiter (HF's SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// Splits text at the matches of a regex or of a literal string.
class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(Regex regex, SplitBehavior behavior, bool invert);
  SplitPreTokenizer(std::string literal, SplitBehavior behavior, bool invert);
  void split(std::vector<PreToken>& pieces) const override;

 private:
  std::unique_ptr<Regex> regex_;  // null: split at `literal_`
  std::string literal_;
  SplitBehavior behavior_;
  bool invert_;
};

// Splits out numbers (Unicode \p{N}): each digit alone, or runs of digits.
class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual_digits);
  void split(std::vector<PreToken>& pieces) const override;

 private:
  Regex digits_;
};

// GPT-2's byte-level step: optionally a space before each piece that lacks one, optionally the
// GPT-2 word regex, then bytes for the model.
class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex);
  void split(std::vector<PreToken>& pieces) const override;
  bool is_byte_level() const override { return true; }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null when use_regex is false
};

// Where Metaspace puts its marker in front of a piece that does not already start with one.
enum class PrependScheme { kAlways, kFirst, kNever };

// SentencePiece's whitespace marker: spaces become `replacement` ("▁"), a marker is prepended
// per the scheme, and optionally the text is split before each marker.
class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split);
  void split(std::vector<PreToken>& pieces) const override;

 private:
  std::string replace_literal_spaces(const std::string& text) const;

  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  // Throws ConfigError if a byte-level step is followed by another step.
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps);
  void split(std::vector<PreToken>& pieces) const override;
  bool is_byte_level() const override;

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

// GPT-2's word regex as HF's ByteLevel pre-tokenizer writes it.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Splits `text` into [begin, end) pieces at `matches` (sorted, non-overlapping) under
// `behavior`, as HF's NormalizedString::split does; empty pieces are dropped.
struct Span {
  std::size_t begin;
  std::size_t end;
};
std::vector<Span> split_at_matches(std::size_t text_size, const std::vector<Regex::Match>& matches,
                                   SplitBehavior behavior, bool invert);

}  // namespace attnvar

// Normalizers: text rewrites applied before pre-tokenization, to each stretch of input between
// added tokens (HF tokenizers' `normalizer`). Only the ones the supported model families
// declare are implemented; the tokenizer.json loader rejects others by name.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "attnvar/tokenizer/regex.h"

namespace attnvar {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites valid UTF-8 text in place.
  virtual void normalize(std::string& text) const = 0;
};

// Prepends `prefix` to non-empty text (SentencePiece's dummy prefix "▁" in Llama 2 files).
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string& text) const override;

 private:
  std::string prefix_;
};

// Replaces every occurrence of a literal string, or every match of a regex, by `content`
// (" " -> "▁" in SentencePiece-style files).
class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::string literal, std::string content);
  ReplaceNormalizer(Regex regex, std::string content);
  void normalize(std::string& text) const override;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;  // set when the pattern is a regex
  std::string content_;
};

// Unicode Normalization Form C (canonical decomposition, then canonical composition), as
// Qwen2's tokenizer.json declares. Tables from Unicode 14 (gen_nfc_tables.py).
class NfcNormalizer final : public Normalizer {
 public:
  void normalize(std::string& text) const override;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void normalize(std::string& text) const override;

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// Replaces every match of `regex` in `text` by `content`.
std::string replace_matches(const Regex& regex, std::string_view text, std::string_view content);

// Replaces every occurrence of `from` (non-empty) in `text` by `to`.
std::string replace_literal(std::string_view text, std::string_view from, std::string_view to);

}  // namespace attnvar

// Decoders: turn the token strings of an id sequence back into text (HF tokenizers' `decoder`).
// A chain works on the list of token strings, each step rewriting the list, and the result is
// the concatenation; the steps mirror HF's decode_chain so that decode() matches it exactly.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attnvar/tokenizer/pre_tokenizer.h"
#include "attnvar/tokenizer/regex.h"

namespace attnvar {

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// Byte alphabet -> bytes for every token spelled in it (other tokens keep their own bytes),
// all concatenated; ill-formed UTF-8 becomes U+FFFD per maximal subpart.
class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override;
};

// The Metaspace marker becomes a space, except in the first token, where it is dropped
// (unless the scheme is "never").
class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}
  void decode_chain(std::vector<std::string>& tokens) const override;

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

// Replaces a literal or regex in every token.
class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::string literal, std::string content);
  ReplaceDecoder(Regex regex, std::string content);
  void decode_chain(std::vector<std::string>& tokens) const override;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
  std::string content_;
};

// Runs of <0xNN> tokens become their bytes when these form valid UTF-8; otherwise each byte
// token of the run becomes U+FFFD.
class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override;
};

// Concatenates all tokens into one.
class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override;
};

// Removes up to `start` leading and `stop` trailing copies of one character from each token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, std::size_t start, std::size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override;

 private:
  std::string content_;  // one UTF-8 character
  std::size_t start_;
  std::size_t stop_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>& tokens) const override;

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// The byte of a "<0xNN>" token (exactly six characters, hex digits in either case), if it is one.
std::optional<unsigned char> byte_token_value(std::string_view token);

}  // namespace attnvar

// Text <-> token ids for the model families attnvar runs, without Python:
// - byte-level BPE (GPT-2 family: SmolLM2, Llama 3, Qwen2);
// - SentencePiece-style BPE with byte fallback (Llama 2, Mistral v0.x, TinyLlama).
// Loaded from an HF tokenizer.json or from GGUF metadata (tokenizer.ggml.*); encode() and
// decode() match HF tokenizers configured as the file declares (docs/tokenizers.md lists the
// algorithms, the supported pipeline steps and every known deviation).
//
// Pipeline of encode(): repair ill-formed UTF-8 (U+FFFD) -> split out added tokens matched
// whole -> normalizer -> pre-tokenizer -> BPE per word -> BOS/EOS per the post-processor.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "attnvar/tokenizer/added_tokens.h"
#include "attnvar/tokenizer/bpe.h"
#include "attnvar/tokenizer/decoder.h"
#include "attnvar/tokenizer/normalizer.h"
#include "attnvar/tokenizer/pre_tokenizer.h"

namespace attnvar {

class GgufFile;

enum class TokenizerFamily {
  kByteLevelBpe,      // words are bytes; tokens spelled in the GPT-2 byte alphabet
  kSentencePieceBpe,  // words are characters; "▁" marks spaces; <0xNN> byte fallback
};

// Everything a loader reads from a file; the Tokenizer constructor checks and assembles it.
struct TokenizerParts {
  std::string origin;  // the file (and field) it came from, for messages
  TokenizerFamily family = TokenizerFamily::kByteLevelBpe;
  std::vector<VocabEntry> vocab;  // the BPE model's vocabulary
  std::vector<BpeMerge> merges;
  BpeOptions bpe;
  std::vector<AddedToken> added_tokens;
  std::unique_ptr<Normalizer> normalizer;       // null: none
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // null: each text stretch is one word
  std::unique_ptr<Decoder> decoder;             // null: tokens joined by " " (as HF)
  std::vector<int32_t> prefix_ids;  // put before the text by encode(add_special=true): BOS
  std::vector<int32_t> suffix_ids;  // put after it: EOS when the model asks for it
  std::optional<int32_t> bos_id;
  std::vector<int32_t> eos_ids;         // EOS and end-of-turn ids
  std::string space_marker = "\u2581";  // SentencePiece's "▁", shown as a space by piece()
};

// The id space of a vocabulary may exceed its token count by at most this many ids plus the
// count itself (ids up to 2 × count + 65536): a larger gap is a FormatError, since tables
// are indexed by id.
inline constexpr int64_t kMaxUnusedIds = 65536;

class Tokenizer {
 public:
  // Throws ConfigError/FormatError naming `parts.origin` when the parts are inconsistent
  // (ids out of range, duplicate ids, a BOS override without a BOS id...).
  explicit Tokenizer(TokenizerParts parts);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // An HF tokenizer.json. BOS/EOS come from its post_processor; when it has none, from a
  // tokenizer_config.json next to it (add_bos_token, add_eos_token, bos_token, eos_token),
  // else the family default (BOS for SentencePiece only). EOS ids also read
  // generation_config.json there.
  // MissingError if the file does not exist; FormatError/ConfigError naming file and field.
  static Tokenizer from_json_file(const std::filesystem::path& path);
  // The same from the text of a tokenizer.json (no sibling files); `origin` names it.
  static Tokenizer from_json(std::string_view json, std::string_view origin);
  // From GGUF metadata (tokenizer.ggml.*), see docs/tokenizers.md for the keys read.
  static Tokenizer from_gguf(const GgufFile& file);
  static Tokenizer from_gguf_file(const std::filesystem::path& path);

  // Token ids of `text` (UTF-8; ill-formed sequences are first replaced by U+FFFD, one per
  // maximal subpart, exactly as Python's errors="replace"). Added and special tokens are
  // matched whole. With add_special, the BOS (if add_bos()) and any other post-processor
  // tokens are added. Thread-safe.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true) const;

  // The text of `ids`, through the declared decoder; with skip_special, special added tokens
  // are left out. ConfigError for an id outside [0, vocab_size()) or without a token. Always
  // valid UTF-8: ill-formed bytes (a GGUF vocabulary may hold tokens with them; id_to_token
  // returns those raw) become U+FFFD.
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // One token as a reader sees it in a parallel set: its bytes with the leading space
  // ("▁" or "Ġ" shown as " "), valid characters as text and each byte of an incomplete or
  // ill-formed UTF-8 sequence as "<0xNN>". Special tokens show their text.
  std::string piece(int32_t id) const;

  // Number of ids: one more than the largest id of the model or the added tokens.
  int32_t vocab_size() const;
  // The token string as stored (byte alphabet for byte-level BPE). ConfigError if no token.
  const std::string& id_to_token(int32_t id) const;
  // The id of a token string as stored; added tokens first, as HF.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  bool is_special(int32_t id) const;

  TokenizerFamily family() const;
  const std::string& origin() const;
  std::optional<int32_t> bos_id() const;
  const std::vector<int32_t>& eos_ids() const;
  void set_eos_ids(std::vector<int32_t> ids);

  // Whether encode(add_special=true) starts with BOS: the model's flag (GGUF
  // tokenizer.ggml.add_bos_token, or the HF post-processor), else the family default.
  bool add_bos() const;
  // Overrides add_bos(): the user's `add_bos` choice (docs/tokenizers.md, "BOS and EOS").
  // ConfigError if the tokenizer has no BOS id and `add` is true.
  void set_add_bos(bool add);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace attnvar

// The BPE model: encodes one pre-tokenized word as token ids by repeatedly merging the adjacent
// pair of lowest rank (ties: the leftmost), as HF tokenizers' BPE does (dropout unsupported).
//
// Two spellings of words, one algorithm:
// - byte-level (GPT-2 family): words arrive as raw bytes and each byte is a starting symbol; the
//   vocabulary, stored in the byte alphabet ("Ġthe"), is converted to raw bytes once at load;
// - character (SentencePiece family): each UTF-8 character is a starting symbol; a character
//   outside the vocabulary becomes its <0xNN> byte tokens (byte fallback), else the unknown token.
// Rank-ordered merges (tokenizer.json, GGUF `merges`) and score-ordered SentencePiece
// vocabularies (GGUF without merges) both reduce to the same (pair -> rank, result) table; see
// merges_from_scores.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace attnvar {

// left + right -> result, applied in order of rank (lower first). Several pairs may share a rank
// (they then compete by position only).
struct BpeMerge {
  int32_t left;
  int32_t right;
  int32_t result;
  int32_t rank;
};

struct BpeOptions {
  bool byte_level = false;        // words are raw bytes, tokens are spelled in the byte alphabet
  bool byte_fallback = false;     // an unknown character becomes its <0xNN> tokens when all exist
  bool fuse_unk = false;          // consecutive unknown characters give one unknown token
  bool ignore_merges = false;     // a word that is itself a token is emitted whole (Llama 3)
  std::optional<int32_t> unk_id;  // without one, unknown characters are dropped (as HF does)
};

// A token of the model's own vocabulary (added tokens are not part of it).
struct VocabEntry {
  std::string token;  // as spelled in the file
  int32_t id;
};

class BpeModel {
 public:
  BpeModel(const std::vector<VocabEntry>& vocab, const std::vector<BpeMerge>& merges,
           BpeOptions options);
  ~BpeModel();
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Appends the ids of one word (valid UTF-8; raw bytes in byte-level mode). Thread-safe.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

  const BpeOptions& options() const { return options_; }

 private:
  struct Symbol {
    int32_t id;
    int32_t prev;  // index of the previous live symbol, -1 at the start
    int32_t next;  // index of the next live symbol, -1 at the end
    bool alive;
  };

  void initial_symbols(std::string_view word, std::vector<Symbol>& symbols) const;
  void push_unknown(std::vector<Symbol>& symbols, bool& last_unk) const;
  void merge(std::vector<Symbol>& symbols) const;
  const std::pair<int32_t, int32_t>* find_merge(int32_t left, int32_t right) const;
  std::optional<int32_t> lookup(std::string_view key) const;

  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  BpeOptions options_;
  // Token spelling -> id, keyed by raw bytes in byte-level mode.
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> ids_;
  std::array<int32_t, 256> byte_ids_{};      // byte-level: the single-byte token of each byte
  std::array<int32_t, 256> fallback_ids_{};  // "<0xNN>" tokens, -1 when absent
  bool fallback_complete_ = false;           // all 256 <0xNN> tokens exist
  // (left << 32 | right) -> (rank, result)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;

  struct Cache;
  std::unique_ptr<Cache> cache_;  // word -> ids, bounded; guarded by its own mutex
};

// SentencePiece's BPE merges by the score of the merged piece (highest first, ties to the
// leftmost position). As a merge table: every split of a piece into two pieces is a pair whose
// rank is the piece's position in (score descending, id ascending) order. `mergeable[id]`
// marks the pieces that take part (normal and user-defined pieces; not control, byte, unused).
std::vector<BpeMerge> merges_from_scores(const std::vector<std::string>& tokens,
                                         const std::vector<float>& scores,
                                         const std::vector<bool>& mergeable);

}  // namespace attnvar

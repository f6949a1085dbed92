#include "attnvar/tokenizer/added_tokens.h"

#include <algorithm>
#include <array>

#include "attnvar/tokenizer/regex.h"
#include "attnvar/tokenizer/utf8.h"

namespace attnvar {

namespace {

// Unicode White_Space (Rust's char::is_whitespace).
bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// The character ending at byte `end` (end > 0) of valid UTF-8 text.
char32_t char_before(std::string_view text, std::size_t end) {
  std::size_t begin = end - 1;
  while (begin > 0 && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) --begin;
  return utf8::decode(text, begin);
}

// A word character for single_word: Unicode \w as Rust's regex-syntax defines it.
bool is_word_char(char32_t c) {
  if (c < 0x80) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  static const Regex word(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])",
                          "single_word check");
  std::string ch;
  utf8::append(ch, c);
  return !word.find_all(ch).empty();
}

}  // namespace

// A byte trie over token contents; leftmost-longest matching walks it from each position.
struct AddedTokenMatcher::Trie {
  struct Node {
    // Few tokens share a prefix, so a short list beats a 256-entry table per node.
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;  // index into `tokens` of the token ending here

    int32_t child(unsigned char b) const {
      for (const auto& [byte, index] : children) {
        if (byte == b) return index;
      }
      return -1;
    }
  };
  std::vector<Node> nodes{1};
  std::vector<AddedToken> tokens;
  std::array<bool, 256> first_byte{};

  void insert(const std::string& key, const AddedToken& token) {
    if (key.empty()) return;
    int32_t node = 0;
    for (char c : key) {
      const auto b = static_cast<unsigned char>(c);
      int32_t next = nodes[node].child(b);
      if (next < 0) {
        next = static_cast<int32_t>(nodes.size());
        nodes[node].children.emplace_back(b, next);
        nodes.emplace_back();
      }
      node = next;
    }
    if (nodes[node].token < 0) {  // the first of two identical contents wins
      nodes[node].token = static_cast<int32_t>(tokens.size());
      tokens.push_back(token);
    }
    first_byte[static_cast<unsigned char>(key[0])] = true;
  }

  // The longest token starting at `pos`: (token index, end), or index -1.
  std::pair<int32_t, std::size_t> longest_at(std::string_view text, std::size_t pos) const {
    int32_t best = -1;
    std::size_t best_end = pos;
    int32_t node = 0;
    for (std::size_t i = pos; i < text.size(); ++i) {
      node = nodes[node].child(static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      if (nodes[node].token >= 0) {
        best = nodes[node].token;
        best_end = i + 1;
      }
    }
    return {best, best_end};
  }
};

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>& tokens,
                                     const Normalizer* normalizer)
    : raw_(std::make_unique<Trie>()), normalized_(std::make_unique<Trie>()) {
  for (const AddedToken& token : tokens) {
    if (token.normalized && normalizer) {
      std::string key = token.content;
      normalizer->normalize(key);
      normalized_->insert(key, token);
    } else if (token.normalized) {
      normalized_->insert(token.content, token);
    } else {
      raw_->insert(token.content, token);
    }
  }
}

AddedTokenMatcher::~AddedTokenMatcher() = default;
AddedTokenMatcher::AddedTokenMatcher(AddedTokenMatcher&&) noexcept = default;
AddedTokenMatcher& AddedTokenMatcher::operator=(AddedTokenMatcher&&) noexcept = default;

bool AddedTokenMatcher::has_normalized_tokens() const { return !normalized_->tokens.empty(); }

std::vector<AddedTokenMatcher::Segment> AddedTokenMatcher::split(std::string_view text,
                                                                 bool normalized_set) const {
  const Trie& trie = normalized_set ? *normalized_ : *raw_;
  std::vector<Segment> out;
  std::size_t done = 0;  // end of the last emitted segment
  std::size_t pos = 0;
  while (pos < text.size()) {
    if (!trie.first_byte[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    const auto [index, match_end] = trie.longest_at(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = trie.tokens[index];
    std::size_t start = pos;
    std::size_t stop = match_end;
    // Matching resumes after this match even when it is discarded, as with HF's
    // non-overlapping match iterator.
    pos = match_end;
    if (token.single_word) {
      const bool start_ok = start == 0 || !is_word_char(char_before(text, start));
      std::size_t after = stop;
      const bool stop_ok = stop == text.size() || !is_word_char(utf8::decode(text, after));
      if (!start_ok || !stop_ok) continue;
    }
    if (token.lstrip) {
      std::size_t s = start;
      while (s > done && is_whitespace(char_before(text, s))) {
        std::size_t b = s - 1;
        while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
        s = b;
      }
      start = s;
    }
    if (token.rstrip) {
      std::size_t e = stop;
      while (e < text.size()) {
        std::size_t next = e;
        if (!is_whitespace(utf8::decode(text, next))) break;
        e = next;
      }
      stop = e;
      pos = std::max(pos, stop);
    }
    if (done < start) out.push_back({done, start, -1});
    out.push_back({start, stop, token.id});
    done = stop;
  }
  if (done < text.size() || out.empty()) out.push_back({done, text.size(), -1});
  return out;
}

}  // namespace attnvar

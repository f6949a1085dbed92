#include "attnvar/tokenizer/bpe.h"

#include <algorithm>
#include <mutex>
#include <numeric>
#include <queue>

#include <fmt/format.h>

#include "attnvar/error.h"
#include "attnvar/tokenizer/byte_level.h"
#include "attnvar/tokenizer/utf8.h"

namespace attnvar {

namespace {

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Words longer than this are not cached: they are rare and would crowd out common ones.
constexpr std::size_t kMaxCachedWordBytes = 256;
// HF tokenizers' BPE cache holds 10,000 words; once full it stops inserting.
constexpr std::size_t kCacheCapacity = 10000;

}  // namespace

struct BpeModel::Cache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> words;
};

BpeModel::BpeModel(const std::vector<VocabEntry>& vocab, const std::vector<BpeMerge>& merges,
                   BpeOptions options)
    : options_(options), cache_(std::make_unique<Cache>()) {
  byte_ids_.fill(-1);
  fallback_ids_.fill(-1);
  ids_.reserve(vocab.size());
  for (const VocabEntry& entry : vocab) {
    if (options_.byte_level) {
      // A token outside the byte alphabet can never be reached from bytes; it stays out of the
      // model (added tokens carry such spellings and are matched before the model runs).
      std::optional<std::string> bytes = byte_level::to_bytes(entry.token);
      if (!bytes) continue;
      if (bytes->size() == 1) byte_ids_[static_cast<unsigned char>((*bytes)[0])] = entry.id;
      ids_.emplace(std::move(*bytes), entry.id);
    } else {
      ids_.emplace(entry.token, entry.id);
    }
    // "<0xNN>" byte-fallback tokens (uppercase hex, as SentencePiece writes them).
    const std::string& t = entry.token;
    if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>') {
      unsigned value = 0;
      bool hex = true;
      for (char c : t.substr(3, 2)) {
        value <<= 4;
        if (c >= '0' && c <= '9') {
          value |= static_cast<unsigned>(c - '0');
        } else if (c >= 'A' && c <= 'F') {
          value |= static_cast<unsigned>(c - 'A' + 10);
        } else {
          hex = false;
        }
      }
      if (hex) fallback_ids_[value] = entry.id;
    }
  }
  fallback_complete_ =
      std::all_of(fallback_ids_.begin(), fallback_ids_.end(), [](int32_t id) { return id >= 0; });
  merges_.reserve(merges.size());
  for (const BpeMerge& m : merges) {
    // The first occurrence of a pair wins, as in HF's merge map built from the list in order.
    merges_.try_emplace(pair_key(m.left, m.right), m.rank, m.result);
  }
}

BpeModel::~BpeModel() = default;

std::optional<int32_t> BpeModel::lookup(std::string_view key) const {
  const auto it = ids_.find(key);
  if (it == ids_.end()) return std::nullopt;
  return it->second;
}

const std::pair<int32_t, int32_t>* BpeModel::find_merge(int32_t left, int32_t right) const {
  const auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::push_unknown(std::vector<Symbol>& symbols, bool& last_unk) const {
  if (!options_.unk_id) {
    last_unk = false;
    return;  // HF drops characters it cannot represent when the model has no unknown token
  }
  if (options_.fuse_unk && last_unk) return;  // absorbed by the previous unknown token
  symbols.push_back({*options_.unk_id, 0, 0, true});
  last_unk = true;
}

void BpeModel::initial_symbols(std::string_view word, std::vector<Symbol>& symbols) const {
  bool last_unk = false;
  if (options_.byte_level) {
    for (char c : word) {
      const int32_t id = byte_ids_[static_cast<unsigned char>(c)];
      if (id >= 0) {
        symbols.push_back({id, 0, 0, true});
        last_unk = false;
      } else {
        push_unknown(symbols, last_unk);
      }
    }
    return;
  }
  for (std::size_t pos = 0; pos < word.size();) {
    const std::size_t length = utf8::unit_at(word, pos).length;
    const std::string_view ch = word.substr(pos, length);
    pos += length;
    if (const auto id = lookup(ch)) {
      symbols.push_back({*id, 0, 0, true});
      last_unk = false;
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (char b : ch) all = all && fallback_ids_[static_cast<unsigned char>(b)] >= 0;
      if (all) {
        for (char b : ch)
          symbols.push_back({fallback_ids_[static_cast<unsigned char>(b)], 0, 0, true});
        last_unk = false;
        continue;
      }
    }
    push_unknown(symbols, last_unk);
  }
}

void BpeModel::merge(std::vector<Symbol>& symbols) const {
  const auto n = static_cast<int32_t>(symbols.size());
  for (int32_t i = 0; i < n; ++i) {
    symbols[i].prev = i - 1;
    symbols[i].next = i + 1 < n ? i + 1 : -1;
  }
  // Candidate merges ordered by (rank, position): a min-heap. An entry goes stale when one of
  // its symbols has merged since; it is recognised by re-looking-up the pair (a position's left
  // symbol only grows, so an unchanged result means an unchanged pair).
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t result;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const auto* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->first, i, m->second});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    const auto* current = find_merge(left.id, right.id);
    if (!current || current->second != top.result) continue;
    left.id = top.result;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const auto* m = find_merge(symbols[left.prev].id, left.id)) {
        queue.push({m->first, left.prev, m->second});
      }
    }
    if (left.next >= 0) {
      if (const auto* m = find_merge(left.id, symbols[left.next].id)) {
        queue.push({m->first, top.pos, m->second});
      }
    }
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (const auto id = lookup(word)) {
      out.push_back(*id);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    const auto it = cache_->words.find(word);
    if (it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  initial_symbols(word, symbols);
  if (symbols.size() > 1) merge(symbols);
  const std::size_t first = out.size();
  for (const Symbol& s : symbols) {
    if (s.alive) out.push_back(s.id);
  }
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    if (cache_->words.size() < kCacheCapacity) {
      cache_->words.emplace(std::string(word),
                            std::vector<int32_t>(out.begin() + first, out.end()));
    }
  }
}

std::vector<BpeMerge> merges_from_scores(const std::vector<std::string>& tokens,
                                         const std::vector<float>& scores,
                                         const std::vector<bool>& mergeable) {
  if (scores.size() != tokens.size() || mergeable.size() != tokens.size()) {
    throw FormatError(fmt::format("merges_from_scores: {} tokens but {} scores and {} flags",
                                  tokens.size(), scores.size(), mergeable.size()));
  }
  std::unordered_map<std::string_view, int32_t> id_of;
  id_of.reserve(tokens.size());
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    if (mergeable[id]) id_of.emplace(tokens[id], static_cast<int32_t>(id));
  }
  // Dense rank of the score, highest first: pieces of equal score compete by position only, as
  // in SentencePiece (and llama.cpp), where a tie goes to the leftmost pair.
  std::vector<float> distinct;
  distinct.reserve(tokens.size());
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    if (mergeable[id]) distinct.push_back(scores[id]);
  }
  std::sort(distinct.begin(), distinct.end(), std::greater<>());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  auto rank_of = [&](float score) {
    return static_cast<int32_t>(
        std::lower_bound(distinct.begin(), distinct.end(), score, std::greater<>()) -
        distinct.begin());
  };
  std::vector<BpeMerge> merges;
  for (std::size_t id = 0; id < tokens.size(); ++id) {
    if (!mergeable[id]) continue;
    const std::string& piece = tokens[id];
    const int32_t rank = rank_of(scores[id]);
    // Split only at character boundaries: pieces are UTF-8 strings.
    for (std::size_t cut = 1; cut < piece.size(); ++cut) {
      if ((static_cast<unsigned char>(piece[cut]) & 0xC0) == 0x80) continue;
      const std::string_view left = std::string_view(piece).substr(0, cut);
      const std::string_view right = std::string_view(piece).substr(cut);
      const auto l = id_of.find(left);
      if (l == id_of.end()) continue;
      const auto r = id_of.find(right);
      if (r == id_of.end()) continue;
      merges.push_back({l->second, r->second, static_cast<int32_t>(id), rank});
    }
  }
  return merges;
}

}  // namespace attnvar

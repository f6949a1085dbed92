#include "attnvar/tokenizer/tokenizer.h"

#include <algorithm>

#include <fmt/format.h>

#include "attnvar/error.h"
#include "attnvar/tokenizer/byte_level.h"
#include "attnvar/tokenizer/utf8.h"

namespace attnvar {

namespace {

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

struct Tokenizer::State {
  std::string origin;
  TokenizerFamily family;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Decoder> decoder;
  std::unique_ptr<AddedTokenMatcher> matcher;
  std::vector<int32_t> prefix_ids;
  std::vector<int32_t> suffix_ids;
  std::optional<int32_t> bos_id;
  std::vector<int32_t> eos_ids;
  std::string space_marker;

  // id -> token; `added_index[id]` >= 0 for added tokens (index into `added`).
  std::vector<std::string> id_to_token;
  std::vector<bool> has_token;
  std::vector<int32_t> added_index;
  std::vector<AddedToken> added;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> model_ids;
  std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>> added_ids;
  // What decode() feeds the decoder for each id. HF decodes an added token declared
  // normalized=true from its normalized content ("<tool>" -> "▁<tool>" under a Prepend
  // normalizer), while id_to_token/token_to_id keep the declared content.
  std::vector<std::string> decode_text;

  void check_id(int32_t id, std::string_view what) const {
    if (id < 0 || id >= static_cast<int32_t>(id_to_token.size()) || !has_token[id]) {
      throw ConfigError(fmt::format("{}: {} id {} has no token (vocabulary has {} ids)", origin,
                                    what, id, id_to_token.size()));
    }
  }

  void encode_stretch(std::string text, bool at_start, std::vector<int32_t>& out) const;
};

Tokenizer::Tokenizer(TokenizerParts parts) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.origin = std::move(parts.origin);
  s.family = parts.family;
  // Tables are indexed by id: before any is built, the id space must be about as large as
  // the token count (real vocabularies are dense; added tokens may leave small gaps), so a
  // file of a few kilobytes cannot ask for gigabytes with one large id.
  {
    int64_t top = -1;
    for (const VocabEntry& e : parts.vocab) top = std::max<int64_t>(top, e.id);
    for (const AddedToken& t : parts.added_tokens) top = std::max<int64_t>(top, t.id);
    const auto count = static_cast<int64_t>(parts.vocab.size() + parts.added_tokens.size());
    if (top + 1 > kMaxUnusedIds + 2 * count) {
      throw FormatError(fmt::format(
          "{}: token ids reach {} for {} tokens; at most {} ids may be unused (a vocabulary "
          "is dense: ids 0..n-1 plus a few gaps)", s.origin, top, count, kMaxUnusedIds + count));
    }
  }
  parts.bpe.byte_level = parts.pre_tokenizer && parts.pre_tokenizer->is_byte_level();
  s.model = std::make_unique<BpeModel>(parts.vocab, parts.merges, parts.bpe);
  s.normalizer = std::move(parts.normalizer);
  s.pre_tokenizer = std::move(parts.pre_tokenizer);
  s.decoder = std::move(parts.decoder);
  s.space_marker = std::move(parts.space_marker);

  int32_t max_id = -1;
  for (const VocabEntry& e : parts.vocab) max_id = std::max(max_id, e.id);
  for (const AddedToken& t : parts.added_tokens) max_id = std::max(max_id, t.id);
  for (const VocabEntry& e : parts.vocab) {
    if (e.id < 0)
      throw FormatError(fmt::format("{}: token {:?} has id {}", s.origin, e.token, e.id));
  }
  const auto n = static_cast<std::size_t>(max_id + 1);
  s.id_to_token.assign(n, {});
  s.has_token.assign(n, false);
  s.added_index.assign(n, -1);
  for (const VocabEntry& e : parts.vocab) {
    if (s.has_token[e.id]) {
      throw FormatError(fmt::format("{}: id {} is given to both {:?} and {:?}", s.origin, e.id,
                                    s.id_to_token[e.id], e.token));
    }
    s.id_to_token[e.id] = e.token;
    s.has_token[e.id] = true;
    s.model_ids.try_emplace(e.token, e.id);
  }
  for (const AddedToken& t : parts.added_tokens) {
    if (t.id < 0) {
      throw FormatError(fmt::format("{}: added token {:?} has id {}", s.origin, t.content, t.id));
    }
    if (t.content.empty()) {
      throw FormatError(fmt::format("{}: added token with id {} is empty", s.origin, t.id));
    }
    // An added token may share its id with the model's own token of the same id (HF writes
    // special tokens into both); the added token's content is what decoding shows.
    s.id_to_token[t.id] = t.content;
    s.has_token[t.id] = true;
    s.added_index[t.id] = static_cast<int32_t>(s.added.size());
    s.added.push_back(t);
    s.added_ids.try_emplace(t.content, t.id);
  }
  s.decode_text = s.id_to_token;
  if (s.normalizer) {
    for (const AddedToken& t : s.added) {
      if (t.normalized) s.normalizer->normalize(s.decode_text[t.id]);
    }
  }
  s.matcher = std::make_unique<AddedTokenMatcher>(s.added, s.normalizer.get());

  s.prefix_ids = std::move(parts.prefix_ids);
  s.suffix_ids = std::move(parts.suffix_ids);
  s.bos_id = parts.bos_id;
  s.eos_ids = std::move(parts.eos_ids);
  for (int32_t id : s.prefix_ids) s.check_id(id, "post-processor");
  for (int32_t id : s.suffix_ids) s.check_id(id, "post-processor");
  if (s.bos_id) s.check_id(*s.bos_id, "BOS");
  for (int32_t id : s.eos_ids) s.check_id(id, "EOS");
  if (parts.bpe.unk_id) s.check_id(*parts.bpe.unk_id, "unknown-token");
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

void Tokenizer::State::encode_stretch(std::string text, bool at_start,
                                      std::vector<int32_t>& out) const {
  if (normalizer) normalizer->normalize(text);
  std::vector<PreToken> words;
  if (matcher->has_normalized_tokens()) {
    // Tokens declared normalized=true are looked for in the normalized text.
    for (const auto& seg : matcher->split(text, /*normalized_set=*/true)) {
      if (seg.id >= 0) {
        // Words before an added token are encoded before it.
        if (!words.empty()) {
          if (pre_tokenizer) pre_tokenizer->split(words);
          for (const PreToken& w : words) model->encode_word(w.text, out);
          words.clear();
        }
        out.push_back(seg.id);
      } else {
        words.push_back({text.substr(seg.begin, seg.end - seg.begin), at_start && seg.begin == 0});
      }
    }
  } else if (!text.empty()) {
    words.push_back({std::move(text), at_start});
  }
  if (words.empty()) return;
  if (pre_tokenizer) pre_tokenizer->split(words);
  for (const PreToken& w : words) model->encode_word(w.text, out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view input, bool add_special) const {
  const State& s = *state_;
  std::string repaired;
  std::string_view text = input;
  if (!utf8::is_valid(input)) {
    repaired = utf8::repair(input);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + s.prefix_ids.size() + s.suffix_ids.size() + 1);
  if (add_special) ids.insert(ids.end(), s.prefix_ids.begin(), s.prefix_ids.end());
  for (const auto& seg : s.matcher->split(text, /*normalized_set=*/false)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
    } else if (seg.end > seg.begin) {
      s.encode_stretch(std::string(text.substr(seg.begin, seg.end - seg.begin)), seg.begin == 0,
                       ids);
    }
  }
  if (add_special) ids.insert(ids.end(), s.suffix_ids.begin(), s.suffix_ids.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  const State& s = *state_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    s.check_id(id, "decode");
    if (skip_special && s.added_index[id] >= 0 && s.added[s.added_index[id]].special) continue;
    tokens.push_back(s.decode_text[id]);
  }
  if (!s.decoder) {
    std::string joined;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (i) joined += ' ';
      joined += tokens[i];
    }
    return utf8::repair(joined);
  }
  s.decoder->decode_chain(tokens);
  std::string text;
  for (const std::string& t : tokens) text += t;
  // Valid UTF-8 whatever the vocabulary holds: a GGUF token's ill-formed bytes become U+FFFD
  // (HF tokenizers, whose tokens are Rust strings, cannot hold such bytes at all).
  return utf8::repair(text);
}

std::string Tokenizer::piece(int32_t id) const {
  const State& s = *state_;
  s.check_id(id, "piece");
  const std::string& token = s.decode_text[id];
  // Special and raw added tokens show their text; a normalized added token shows like the
  // model's own tokens (its normalized form may carry the space marker).
  if (s.added_index[id] >= 0 && !s.added[s.added_index[id]].normalized) {
    return utf8::render_bytes(token);
  }
  if (s.family == TokenizerFamily::kByteLevelBpe) {
    const std::optional<std::string> bytes = byte_level::to_bytes(token);
    return utf8::render_bytes(bytes ? *bytes : token);
  }
  if (const auto byte = byte_token_value(token)) {
    return utf8::render_bytes(std::string(1, static_cast<char>(*byte)));
  }
  return utf8::render_bytes(s.space_marker.empty() ? token
                                                   : replace_literal(token, s.space_marker, " "));
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(state_->id_to_token.size()); }

const std::string& Tokenizer::id_to_token(int32_t id) const {
  state_->check_id(id, "id_to_token");
  return state_->id_to_token[id];
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = state_->added_ids.find(token); it != state_->added_ids.end()) {
    return it->second;
  }
  if (const auto it = state_->model_ids.find(token); it != state_->model_ids.end()) {
    return it->second;
  }
  return std::nullopt;
}

bool Tokenizer::is_special(int32_t id) const {
  state_->check_id(id, "is_special");
  return state_->added_index[id] >= 0 && state_->added[state_->added_index[id]].special;
}

TokenizerFamily Tokenizer::family() const { return state_->family; }
const std::string& Tokenizer::origin() const { return state_->origin; }
std::optional<int32_t> Tokenizer::bos_id() const { return state_->bos_id; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return state_->eos_ids; }

void Tokenizer::set_eos_ids(std::vector<int32_t> ids) {
  for (int32_t id : ids) state_->check_id(id, "EOS");
  state_->eos_ids = std::move(ids);
}

bool Tokenizer::add_bos() const {
  const State& s = *state_;
  return s.bos_id && !s.prefix_ids.empty() && s.prefix_ids.front() == *s.bos_id;
}

void Tokenizer::set_add_bos(bool add) {
  State& s = *state_;
  if (add == add_bos()) return;
  if (add) {
    if (!s.bos_id) {
      throw ConfigError(
          fmt::format("{}: add_bos=True but the tokenizer declares no BOS token", s.origin));
    }
    s.prefix_ids.insert(s.prefix_ids.begin(), *s.bos_id);
  } else {
    s.prefix_ids.erase(s.prefix_ids.begin());
  }
}

}  // namespace attnvar

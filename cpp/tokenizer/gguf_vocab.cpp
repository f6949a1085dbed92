// Tokenizer::from_gguf: the tokenizer.ggml.* metadata of a GGUF file to TokenizerParts.
//
// tokenizer.ggml.model "gpt2" is byte-level BPE: tokens spelled in the byte alphabet, ranked
// merges, and the pre-tokenizer named by tokenizer.ggml.pre. "llama" is SentencePiece BPE:
// pieces with scores (merged best score first), "▁" for spaces, <0xNN> byte fallback.
#include <algorithm>

#include <fmt/format.h>

#include "attnvar/error.h"
#include "attnvar/model/gguf.h"
#include "attnvar/tokenizer/named_pre_tokenizer.h"
#include "attnvar/tokenizer/tokenizer.h"

namespace attnvar {

namespace {

// llama.cpp's token types (tokenizer.ggml.token_type).
enum GgufTokenType : int64_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

constexpr std::string_view kSpaceMarker = "\u2581";

std::optional<int32_t> token_id_key(const GgufFile& f, const std::string& key, std::size_t n) {
  const std::optional<int64_t> v = f.get_int(key);
  if (!v) return std::nullopt;
  if (*v < 0 || static_cast<std::size_t>(*v) >= n) {
    // Some converters write -1 (or a stale id) for "none"; treating it as absent is what
    // llama.cpp does too.
    return std::nullopt;
  }
  return static_cast<int32_t>(*v);
}

std::vector<BpeMerge> parse_merges(const std::vector<std::string>& merges,
                                   const std::vector<std::string>& tokens,
                                   const std::string& origin) {
  std::unordered_map<std::string_view, int32_t> id_of;
  id_of.reserve(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    id_of.try_emplace(tokens[i], static_cast<int32_t>(i));
  }
  std::vector<BpeMerge> out;
  out.reserve(merges.size());
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const std::string& line = merges[i];
    // Split at the first space after the first character, so a left token may itself be a
    // space (never the case in the byte alphabet, where a space is spelled "Ġ").
    const std::size_t space = line.size() > 1 ? line.find(' ', 1) : std::string::npos;
    if (space == std::string::npos) {
      throw FormatError(
          fmt::format("{}: tokenizer.ggml.merges[{}] {:?} is not two tokens", origin, i, line));
    }
    const std::string left = line.substr(0, space);
    const std::string right = line.substr(space + 1);
    const auto l = id_of.find(left);
    const auto r = id_of.find(right);
    const auto m = id_of.find(left + right);
    if (l == id_of.end() || r == id_of.end() || m == id_of.end()) {
      throw FormatError(fmt::format(
          "{}: tokenizer.ggml.merges[{}] {:?} uses a token missing from tokenizer.ggml.tokens",
          origin, i, line));
    }
    out.push_back({l->second, r->second, m->second, static_cast<int32_t>(i)});
  }
  return out;
}

}  // namespace

Tokenizer Tokenizer::from_gguf_file(const std::filesystem::path& path) {
  const GgufFile file(path.string());
  return from_gguf(file);
}

Tokenizer Tokenizer::from_gguf(const GgufFile& f) {
  const std::string& origin = f.path();
  const std::optional<std::string> model = f.get_string("tokenizer.ggml.model");
  if (!model) throw FormatError(fmt::format("{}: tokenizer.ggml.model is missing", origin));
  const bool byte_level = *model == "gpt2";
  if (!byte_level && *model != "llama") {
    throw ConfigError(fmt::format(
        "{}: tokenizer.ggml.model {:?} is not supported (supported: gpt2, llama)", origin, *model));
  }
  std::optional<std::vector<std::string>> tokens = f.get_string_array("tokenizer.ggml.tokens");
  if (!tokens || tokens->empty()) {
    throw FormatError(fmt::format("{}: tokenizer.ggml.tokens is missing or empty", origin));
  }
  const std::size_t n = tokens->size();
  std::vector<int64_t> types(n, kNormal);
  if (auto t = f.get_int_array("tokenizer.ggml.token_type")) {
    if (t->size() != n) {
      throw FormatError(fmt::format("{}: tokenizer.ggml.token_type has {} entries for {} tokens",
                                    origin, t->size(), n));
    }
    types = std::move(*t);
  }
  if (f.get_bool("tokenizer.ggml.remove_extra_whitespaces").value_or(false)) {
    throw ConfigError(
        fmt::format("{}: tokenizer.ggml.remove_extra_whitespaces=true is not supported", origin));
  }

  TokenizerParts parts;
  parts.origin = origin;
  parts.family = byte_level ? TokenizerFamily::kByteLevelBpe : TokenizerFamily::kSentencePieceBpe;
  parts.vocab.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    parts.vocab.push_back({(*tokens)[i], static_cast<int32_t>(i)});

  // Control and unknown tokens are special; user-defined ones are added tokens too (llama.cpp
  // matches all of them whole in the text). Neither passes through the normalizer.
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t type = types[i];
    if (type != kControl && type != kUnknown && type != kUserDefined) continue;
    if ((*tokens)[i].empty()) continue;
    AddedToken t;
    t.id = static_cast<int32_t>(i);
    t.content = (*tokens)[i];
    t.special = type != kUserDefined;
    t.normalized = false;
    parts.added_tokens.push_back(std::move(t));
  }

  const std::optional<std::vector<std::string>> merges =
      f.get_string_array("tokenizer.ggml.merges");
  if (byte_level) {
    if (!merges) throw FormatError(fmt::format("{}: tokenizer.ggml.merges is missing", origin));
    parts.merges = parse_merges(*merges, *tokens, origin);
    // Without a name, the GPT-2 regex: the byte-level family's own default.
    const std::string pre = f.get_string("tokenizer.ggml.pre").value_or("gpt-2");
    NamedPreTokenizer named = named_pre_tokenizer(pre, fmt::format("{}", origin));
    parts.pre_tokenizer = std::move(named.pre_tokenizer);
    parts.bpe.ignore_merges = named.ignore_merges;
    parts.decoder = std::make_unique<ByteLevelDecoder>();
    parts.space_marker.clear();
  } else {
    if (merges && !merges->empty()) {
      parts.merges = parse_merges(*merges, *tokens, origin);
    } else {
      const std::optional<std::vector<double>> scores = f.get_float_array("tokenizer.ggml.scores");
      if (!scores || scores->size() != n) {
        throw FormatError(fmt::format(
            "{}: tokenizer.ggml.scores is missing or does not have one score per token (needed "
            "to derive the merges of a SentencePiece vocabulary)",
            origin));
      }
      std::vector<float> score_f(scores->begin(), scores->end());
      std::vector<bool> mergeable(n);
      for (std::size_t i = 0; i < n; ++i) {
        mergeable[i] = types[i] == kNormal || types[i] == kUserDefined || types[i] == kUndefined;
      }
      parts.merges = merges_from_scores(*tokens, score_f, mergeable);
    }
    const bool space_prefix = f.get_bool("tokenizer.ggml.add_space_prefix").value_or(true);
    // SentencePiece's own behaviour (as llama.cpp and HF's legacy Llama normalizer): the dummy
    // prefix goes before every stretch of text, including one that follows a special token.
    std::vector<std::unique_ptr<Normalizer>> norm;
    if (space_prefix)
      norm.push_back(std::make_unique<PrependNormalizer>(std::string(kSpaceMarker)));
    norm.push_back(std::make_unique<ReplaceNormalizer>(" ", std::string(kSpaceMarker)));
    parts.normalizer = std::make_unique<SequenceNormalizer>(std::move(norm));
    parts.bpe.byte_fallback = true;
    parts.bpe.fuse_unk = true;
    parts.bpe.unk_id = token_id_key(f, "tokenizer.ggml.unknown_token_id", n);
    if (!parts.bpe.unk_id) {
      const auto it = std::find(tokens->begin(), tokens->end(), "<unk>");
      if (it != tokens->end()) parts.bpe.unk_id = static_cast<int32_t>(it - tokens->begin());
    }
    std::vector<std::unique_ptr<Decoder>> dec;
    dec.push_back(std::make_unique<ReplaceDecoder>(std::string(kSpaceMarker), " "));
    dec.push_back(std::make_unique<ByteFallbackDecoder>());
    dec.push_back(std::make_unique<FuseDecoder>());
    if (space_prefix) dec.push_back(std::make_unique<StripDecoder>(" ", 1, 0));
    parts.decoder = std::make_unique<SequenceDecoder>(std::move(dec));
    parts.space_marker = std::string(kSpaceMarker);
  }

  // BOS/EOS (docs/tokenizers.md, "BOS and EOS"): the file's flags; absent, BOS for
  // SentencePiece only.
  parts.bos_id = token_id_key(f, "tokenizer.ggml.bos_token_id", n);
  const std::optional<int32_t> eos = token_id_key(f, "tokenizer.ggml.eos_token_id", n);
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"}) {
    if (const auto id = token_id_key(f, key, n)) {
      if (std::find(parts.eos_ids.begin(), parts.eos_ids.end(), *id) == parts.eos_ids.end()) {
        parts.eos_ids.push_back(*id);
      }
    }
  }
  const bool add_bos = f.get_bool("tokenizer.ggml.add_bos_token").value_or(!byte_level);
  const bool add_eos = f.get_bool("tokenizer.ggml.add_eos_token").value_or(false);
  if (add_bos && parts.bos_id) parts.prefix_ids.push_back(*parts.bos_id);
  if (add_eos && eos) parts.suffix_ids.push_back(*eos);
  return Tokenizer(std::move(parts));
}

}  // namespace attnvar

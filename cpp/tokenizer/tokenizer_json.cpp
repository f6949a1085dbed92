// Tokenizer::from_json / from_json_file: HF tokenizer.json (tokenizers' serialization format)
// to TokenizerParts. Only the pipeline steps of the supported families are accepted; anything
// else is a ConfigError naming the field and the step type, never a silent approximation.
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "attnvar/error.h"
#include "attnvar/tokenizer/tokenizer.h"

namespace attnvar {

namespace {

using nlohmann::json;

// Where we are in the file, for messages: "tokenizer.json: pre_tokenizer.pretokenizers[1]".
struct Where {
  std::string origin;
  std::string field;

  Where at(std::string_view key) const {
    return {origin, field.empty() ? std::string(key) : fmt::format("{}.{}", field, key)};
  }
  Where at(std::size_t index) const { return {origin, fmt::format("{}[{}]", field, index)}; }
  std::string str() const { return fmt::format("{}: {}", origin, field); }
};

[[noreturn]] void format_error(const Where& w, std::string_view what) {
  throw FormatError(fmt::format("{}: {}", w.str(), what));
}

[[noreturn]] void unsupported(const Where& w, std::string_view what) {
  throw ConfigError(fmt::format("{}: {}", w.str(), what));
}

const json& member(const json& obj, std::string_view key, const Where& w) {
  if (!obj.is_object()) format_error(w, "expected an object");
  const auto it = obj.find(key);
  if (it == obj.end()) format_error(w.at(key), "missing");
  return *it;
}

std::string get_string(const json& obj, std::string_view key, const Where& w) {
  const json& v = member(obj, key, w);
  if (!v.is_string()) format_error(w.at(key), "expected a string");
  return v.get<std::string>();
}

bool get_bool(const json& obj, std::string_view key, const Where& w, bool fallback) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) format_error(w.at(key), "expected true or false");
  return it->get<bool>();
}

std::string type_of(const json& obj, const Where& w) { return get_string(obj, "type", w); }

// A Replace/Split pattern: {"String": "..."} or {"Regex": "..."}.
struct Pattern {
  bool is_regex;
  std::string text;
};

Pattern get_pattern(const json& obj, const Where& w) {
  const json& p = member(obj, "pattern", w);
  const Where pw = w.at("pattern");
  if (p.is_object() && p.contains("String") && p["String"].is_string()) {
    return {false, p["String"].get<std::string>()};
  }
  if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) {
    return {true, p["Regex"].get<std::string>()};
  }
  format_error(pw, "expected {\"String\": ...} or {\"Regex\": ...}");
}

std::unique_ptr<Normalizer> parse_normalizer(const json& j, const Where& w) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, w);
  if (type == "Sequence") {
    const json& steps = member(j, "normalizers", w);
    if (!steps.is_array()) format_error(w.at("normalizers"), "expected an array");
    std::vector<std::unique_ptr<Normalizer>> parsed;
    for (std::size_t i = 0; i < steps.size(); ++i) {
      if (auto step = parse_normalizer(steps[i], w.at("normalizers").at(i))) {
        parsed.push_back(std::move(step));
      }
    }
    return std::make_unique<SequenceNormalizer>(std::move(parsed));
  }
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(get_string(j, "prepend", w));
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  if (type == "Replace") {
    const Pattern p = get_pattern(j, w);
    std::string content = get_string(j, "content", w);
    if (p.is_regex) {
      return std::make_unique<ReplaceNormalizer>(Regex(p.text, w.at("pattern").str()),
                                                 std::move(content));
    }
    return std::make_unique<ReplaceNormalizer>(p.text, std::move(content));
  }
  unsupported(w, fmt::format("normalizer type {:?} is not supported (supported: Sequence, "
                             "Prepend, Replace, NFC)",
                             type));
}

SplitBehavior parse_behavior(const json& j, const Where& w) {
  const std::string b = get_string(j, "behavior", w);
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  format_error(w.at("behavior"), fmt::format("unknown split behavior {:?}", b));
}

PrependScheme parse_prepend_scheme(const json& j, const Where& w) {
  // Older files say add_prefix_space instead of prepend_scheme.
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    const std::string s = get_string(j, "prepend_scheme", w);
    if (s == "always") return PrependScheme::kAlways;
    if (s == "first") return PrependScheme::kFirst;
    if (s == "never") return PrependScheme::kNever;
    format_error(w.at("prepend_scheme"), fmt::format("unknown prepend scheme {:?}", s));
  }
  return get_bool(j, "add_prefix_space", w, true) ? PrependScheme::kAlways : PrependScheme::kNever;
}

std::string get_replacement(const json& j, const Where& w) {
  std::string r = get_string(j, "replacement", w);
  if (r.empty()) format_error(w.at("replacement"), "empty replacement character");
  return r;
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const json& j, const Where& w,
                                                  std::string& space_marker) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, w);
  if (type == "Sequence") {
    const json& steps = member(j, "pretokenizers", w);
    if (!steps.is_array()) format_error(w.at("pretokenizers"), "expected an array");
    std::vector<std::unique_ptr<PreTokenizer>> parsed;
    for (std::size_t i = 0; i < steps.size(); ++i) {
      if (auto step = parse_pre_tokenizer(steps[i], w.at("pretokenizers").at(i), space_marker)) {
        parsed.push_back(std::move(step));
      }
    }
    try {
      return std::make_unique<SequencePreTokenizer>(std::move(parsed));
    } catch (const ConfigError& e) {
      unsupported(w, e.what());
    }
  }
  if (type == "Split") {
    const Pattern p = get_pattern(j, w);
    const SplitBehavior behavior = parse_behavior(j, w);
    const bool invert = get_bool(j, "invert", w, false);
    if (p.is_regex) {
      return std::make_unique<SplitPreTokenizer>(Regex(p.text, w.at("pattern").str()), behavior,
                                                 invert);
    }
    return std::make_unique<SplitPreTokenizer>(p.text, behavior, invert);
  }
  if (type == "Digits") {
    return std::make_unique<DigitsPreTokenizer>(get_bool(j, "individual_digits", w, false));
  }
  if (type == "ByteLevel") {
    return std::make_unique<ByteLevelPreTokenizer>(get_bool(j, "add_prefix_space", w, true),
                                                   get_bool(j, "use_regex", w, true));
  }
  if (type == "Metaspace") {
    space_marker = get_replacement(j, w);
    return std::make_unique<MetaspacePreTokenizer>(space_marker, parse_prepend_scheme(j, w),
                                                   get_bool(j, "split", w, true));
  }
  unsupported(w, fmt::format("pre-tokenizer type {:?} is not supported (supported: Sequence, "
                             "Split, Digits, ByteLevel, Metaspace)",
                             type));
}

std::unique_ptr<Decoder> parse_decoder(const json& j, const Where& w) {
  if (j.is_null()) return nullptr;
  const std::string type = type_of(j, w);
  if (type == "Sequence") {
    const json& steps = member(j, "decoders", w);
    if (!steps.is_array()) format_error(w.at("decoders"), "expected an array");
    std::vector<std::unique_ptr<Decoder>> parsed;
    for (std::size_t i = 0; i < steps.size(); ++i) {
      if (auto step = parse_decoder(steps[i], w.at("decoders").at(i))) {
        parsed.push_back(std::move(step));
      }
    }
    return std::make_unique<SequenceDecoder>(std::move(parsed));
  }
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Metaspace") {
    return std::make_unique<MetaspaceDecoder>(get_replacement(j, w), parse_prepend_scheme(j, w));
  }
  if (type == "Replace") {
    const Pattern p = get_pattern(j, w);
    std::string content = get_string(j, "content", w);
    if (p.is_regex) {
      return std::make_unique<ReplaceDecoder>(Regex(p.text, w.at("pattern").str()),
                                              std::move(content));
    }
    return std::make_unique<ReplaceDecoder>(p.text, std::move(content));
  }
  if (type == "Strip") {
    std::string content = get_string(j, "content", w);
    const json& start = member(j, "start", w);
    const json& stop = member(j, "stop", w);
    if (!start.is_number_unsigned() || !stop.is_number_unsigned()) {
      format_error(w, "start and stop must be non-negative integers");
    }
    return std::make_unique<StripDecoder>(std::move(content), start.get<std::size_t>(),
                                          stop.get<std::size_t>());
  }
  unsupported(w, fmt::format("decoder type {:?} is not supported (supported: Sequence, "
                             "ByteLevel, ByteFallback, Fuse, Metaspace, Replace, Strip)",
                             type));
}

int32_t get_id(const json& v, const Where& w) {
  if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
    format_error(w, "expected a token id (a non-negative integer)");
  }
  return static_cast<int32_t>(v.get<int64_t>());
}

// Post-processor -> ids before and after the text. Only the special-token layout of a single
// sequence matters to encode(); pair templates are ignored.
void parse_post_processor(const json& j, const Where& w, std::vector<int32_t>& prefix,
                          std::vector<int32_t>& suffix) {
  if (j.is_null()) return;
  const std::string type = type_of(j, w);
  if (type == "Sequence") {
    const json& steps = member(j, "processors", w);
    if (!steps.is_array()) format_error(w.at("processors"), "expected an array");
    for (std::size_t i = 0; i < steps.size(); ++i) {
      parse_post_processor(steps[i], w.at("processors").at(i), prefix, suffix);
    }
    return;
  }
  if (type == "ByteLevel") return;  // only adjusts offsets
  if (type == "TemplateProcessing") {
    const json& single = member(j, "single", w);
    const json& specials = member(j, "special_tokens", w);
    if (!single.is_array()) format_error(w.at("single"), "expected an array");
    bool seen_sequence = false;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const Where iw = w.at("single").at(i);
      const json& item = single[i];
      if (item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      if (!item.contains("SpecialToken")) format_error(iw, "expected Sequence or SpecialToken");
      const std::string name = get_string(item["SpecialToken"], "id", iw.at("SpecialToken"));
      const Where sw = w.at("special_tokens").at(name);
      const json& ids = member(member(specials, name, w.at("special_tokens")), "ids", sw);
      if (!ids.is_array()) format_error(sw.at("ids"), "expected an array");
      for (std::size_t k = 0; k < ids.size(); ++k) {
        (seen_sequence ? suffix : prefix).push_back(get_id(ids[k], sw.at("ids").at(k)));
      }
    }
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    // cls and sep are [token, id] pairs: <cls> text <sep>.
    const json& cls = member(j, "cls", w);
    const json& sep = member(j, "sep", w);
    if (!cls.is_array() || cls.size() != 2) format_error(w.at("cls"), "expected [token, id]");
    if (!sep.is_array() || sep.size() != 2) format_error(w.at("sep"), "expected [token, id]");
    prefix.push_back(get_id(cls[1], w.at("cls").at(1)));
    suffix.push_back(get_id(sep[1], w.at("sep").at(1)));
    return;
  }
  unsupported(w, fmt::format("post-processor type {:?} is not supported (supported: Sequence, "
                             "ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing)",
                             type));
}

// The content of a token field of tokenizer_config.json: "text" or {"content": "text"}.
std::optional<std::string> config_token(const json& config, std::string_view key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

json read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw MissingError(fmt::format("{}: cannot open", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return json::parse(text.str());
  } catch (const json::exception& e) {  // parse errors, and numbers out of range (1e1010)
    throw FormatError(
        fmt::format("{}: not valid JSON: {}", path.string(), printable(e.what())));
  }
}

// Sibling files that complete a tokenizer.json: what transformers reads next to it.
struct Siblings {
  std::optional<json> tokenizer_config;
  std::optional<json> generation_config;
};

TokenizerParts parse_tokenizer_json(const json& root, const std::string& origin,
                                    const Siblings& siblings) {
  const Where top{origin, ""};
  if (!root.is_object()) format_error({origin, "(top level)"}, "expected an object");
  TokenizerParts parts;
  parts.origin = origin;

  // The model.
  const json& model = member(root, "model", top);
  const Where mw = top.at("model");
  const std::string model_type =
      model.contains("type") ? get_string(model, "type", mw) : std::string("BPE");
  if (model_type != "BPE") {
    unsupported(mw.at("type"),
                fmt::format("model type {:?} is not supported (only BPE)", model_type));
  }
  const json& vocab = member(model, "vocab", mw);
  if (!vocab.is_object()) format_error(mw.at("vocab"), "expected an object token -> id");
  std::unordered_map<std::string, int32_t> ids;
  ids.reserve(vocab.size());
  parts.vocab.reserve(vocab.size());
  for (const auto& [token, id_value] : vocab.items()) {
    const int32_t id = get_id(id_value, mw.at("vocab").at(token));
    parts.vocab.push_back({token, id});
    ids.emplace(token, id);
  }
  const json& merges = member(model, "merges", mw);
  if (!merges.is_array()) format_error(mw.at("merges"), "expected an array");
  parts.merges.reserve(merges.size());
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const Where w = mw.at("merges").at(i);
    std::string left;
    std::string right;
    if (merges[i].is_string()) {
      // Legacy "left right" form (tokens contain no plain space in byte-level vocabularies).
      const std::string line = merges[i].get<std::string>();
      const std::size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        format_error(w, fmt::format("merge {:?} is not two tokens separated by one space", line));
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merges[i].is_array() && merges[i].size() == 2 && merges[i][0].is_string() &&
               merges[i][1].is_string()) {
      left = merges[i][0].get<std::string>();
      right = merges[i][1].get<std::string>();
    } else {
      format_error(w, "expected \"left right\" or [left, right]");
    }
    const auto l = ids.find(left);
    const auto r = ids.find(right);
    const auto m = ids.find(left + right);
    if (l == ids.end() || r == ids.end() || m == ids.end()) {
      format_error(
          w, fmt::format("merge {:?} + {:?} uses a token missing from model.vocab", left, right));
    }
    parts.merges.push_back({l->second, r->second, m->second, static_cast<int32_t>(i)});
  }
  if (model.contains("dropout") && model["dropout"].is_number() &&
      model["dropout"].get<double>() > 0.0) {
    unsupported(mw.at("dropout"), "BPE dropout is not supported (encoding must be deterministic)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      unsupported(mw.at(key), "subword prefixes/suffixes are not supported by these families");
    }
  }
  parts.bpe.byte_fallback = get_bool(model, "byte_fallback", mw, false);
  parts.bpe.fuse_unk = get_bool(model, "fuse_unk", mw, false);
  parts.bpe.ignore_merges = get_bool(model, "ignore_merges", mw, false);
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    // As in HF, the unknown token must be in the model's vocabulary; if it is not, unknown
    // characters are dropped (HF fails on them instead; documented).
    const auto it = ids.find(model["unk_token"].get<std::string>());
    if (it != ids.end()) parts.bpe.unk_id = it->second;
  }

  // Added tokens.
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    const json& added = root["added_tokens"];
    const Where aw = top.at("added_tokens");
    if (!added.is_array()) format_error(aw, "expected an array");
    for (std::size_t i = 0; i < added.size(); ++i) {
      const Where w = aw.at(i);
      AddedToken t;
      t.id = get_id(member(added[i], "id", w), w.at("id"));
      t.content = get_string(added[i], "content", w);
      t.special = get_bool(added[i], "special", w, false);
      t.normalized = get_bool(added[i], "normalized", w, !t.special);
      t.lstrip = get_bool(added[i], "lstrip", w, false);
      t.rstrip = get_bool(added[i], "rstrip", w, false);
      t.single_word = get_bool(added[i], "single_word", w, false);
      parts.added_tokens.push_back(std::move(t));
    }
  }

  // The pipeline.
  parts.normalizer = parse_normalizer(root.value("normalizer", json()), top.at("normalizer"));
  parts.pre_tokenizer = parse_pre_tokenizer(root.value("pre_tokenizer", json()),
                                            top.at("pre_tokenizer"), parts.space_marker);
  parts.decoder = parse_decoder(root.value("decoder", json()), top.at("decoder"));
  parts.family = parts.pre_tokenizer && parts.pre_tokenizer->is_byte_level()
                     ? TokenizerFamily::kByteLevelBpe
                     : TokenizerFamily::kSentencePieceBpe;
  if (parts.family == TokenizerFamily::kByteLevelBpe) parts.space_marker.clear();

  auto id_of = [&](const std::string& token) -> std::optional<int32_t> {
    for (const AddedToken& t : parts.added_tokens) {
      if (t.content == token) return t.id;
    }
    const auto it = ids.find(token);
    if (it == ids.end()) return std::nullopt;
    return it->second;
  };

  // BOS/EOS. The post-processor is the model's own statement; without one, transformers reads
  // tokenizer_config.json, and without that the family default applies (BOS for SentencePiece,
  // none for byte-level BPE).
  const json& post = root.value("post_processor", json());
  parse_post_processor(post, top.at("post_processor"), parts.prefix_ids, parts.suffix_ids);
  const json config = siblings.tokenizer_config.value_or(json::object());
  if (const auto bos = config_token(config, "bos_token")) parts.bos_id = id_of(*bos);
  if (!parts.bos_id && !parts.prefix_ids.empty()) parts.bos_id = parts.prefix_ids.front();
  if (!parts.bos_id && parts.family == TokenizerFamily::kSentencePieceBpe) {
    parts.bos_id = id_of("<s>");
  }
  std::optional<int32_t> eos;
  if (const auto e = config_token(config, "eos_token")) eos = id_of(*e);
  if (!eos && parts.family == TokenizerFamily::kSentencePieceBpe) eos = id_of("</s>");
  if (eos) parts.eos_ids.push_back(*eos);
  if (siblings.generation_config) {
    const json& g = *siblings.generation_config;
    const json e = g.value("eos_token_id", json());
    auto add_eos = [&](const json& v) {
      if (v.is_number_integer()) {
        const auto id = static_cast<int32_t>(v.get<int64_t>());
        if (std::find(parts.eos_ids.begin(), parts.eos_ids.end(), id) == parts.eos_ids.end()) {
          parts.eos_ids.push_back(id);
        }
      }
    };
    if (e.is_array()) {
      for (const json& v : e) add_eos(v);
    } else {
      add_eos(e);
    }
  }
  if (post.is_null()) {
    const bool family_bos = parts.family == TokenizerFamily::kSentencePieceBpe;
    const bool add_bos = config.contains("add_bos_token") && config["add_bos_token"].is_boolean()
                             ? config["add_bos_token"].get<bool>()
                             : family_bos;
    const bool add_eos = config.contains("add_eos_token") && config["add_eos_token"].is_boolean()
                             ? config["add_eos_token"].get<bool>()
                             : false;
    if (add_bos && parts.bos_id) parts.prefix_ids.push_back(*parts.bos_id);
    if (add_eos && eos) parts.suffix_ids.push_back(*eos);
  }
  return parts;
}

}  // namespace

Tokenizer Tokenizer::from_json(std::string_view text, std::string_view origin) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& e) {  // parse errors, and numbers out of range (1e1010)
    throw FormatError(fmt::format("{}: not valid JSON: {}", origin, printable(e.what())));
  }
  return Tokenizer(parse_tokenizer_json(root, std::string(origin), {}));
}

Tokenizer Tokenizer::from_json_file(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) {
    throw MissingError(fmt::format("{}: tokenizer file does not exist", path.string()));
  }
  const json root = read_json_file(path);
  Siblings siblings;
  const std::filesystem::path dir = path.parent_path();
  if (std::filesystem::exists(dir / "tokenizer_config.json")) {
    siblings.tokenizer_config = read_json_file(dir / "tokenizer_config.json");
  }
  if (std::filesystem::exists(dir / "generation_config.json")) {
    siblings.generation_config = read_json_file(dir / "generation_config.json");
  }
  return Tokenizer(parse_tokenizer_json(root, path.string(), siblings));
}

}  // namespace attnvar

// Tokenizers from C++ alone: UTF-8 repair and rendering by the Unicode rules, BPE merge order
// on hand-built vocabularies (expected ids worked out by hand from the merge ranks), added
// tokens, BOS defaults and overrides, GGUF SentencePiece vocabularies merged by score, errors
// that name file and field, thread safety and linear-time growth on pathological inputs.
// Token-for-token parity with HF tokenizers is checked in tests/python/test_tokenizer*.py.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/tokenizer/byte_level.h"
#include "attnvar/tokenizer/normalizer.h"
#include "attnvar/tokenizer/tokenizer.h"
#include "attnvar/tokenizer/utf8.h"
#include "catch_compat.h"

namespace fs = std::filesystem;
using attnvar::ConfigError;
using attnvar::FormatError;
using attnvar::MissingError;
using attnvar::Tokenizer;
using Ids = std::vector<int32_t>;

namespace {

std::string tok_tmp_path(const std::string& name) {
  const fs::path dir = fs::path(ATTNVAR_TEST_TMPDIR) / "tokenizer";
  fs::create_directories(dir);
  return (dir / name).string();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned char>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// A byte-level tokenizer.json: ids 0..255 are the bytes 0..255 (in the byte alphabet), then
// one token per merge result in merge order, then "<|end|>" as a special added token.
struct ByteLevelSpec {
  std::vector<std::pair<std::string, std::string>> merges;  // raw bytes, not the alphabet
  std::string pre_tokenizer = R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":true})";
  std::string post_processor = "null";
};

std::string byte_level_json(const ByteLevelSpec& spec, int32_t* end_id = nullptr) {
  using attnvar::byte_level::to_spelling;
  std::vector<std::string> vocab;
  for (int b = 0; b < 256; ++b) vocab.push_back(to_spelling(std::string(1, static_cast<char>(b))));
  std::string merges;
  for (const auto& [l, r] : spec.merges) {
    vocab.push_back(to_spelling(l + r));
    merges += fmt::format("{}[{},{}]", merges.empty() ? "" : ",", json_string(to_spelling(l)),
                          json_string(to_spelling(r)));
  }
  std::string vocab_json;
  for (std::size_t i = 0; i < vocab.size(); ++i) {
    vocab_json += fmt::format("{}{}:{}", i ? "," : "", json_string(vocab[i]), i);
  }
  const auto end = static_cast<int32_t>(vocab.size());
  if (end_id) *end_id = end;
  return fmt::format(
      R"({{"version":"1.0","added_tokens":[{{"id":{},"content":"<|end|>","special":true,)"
      R"("normalized":false,"lstrip":false,"rstrip":false,"single_word":false}}],)"
      R"("normalizer":null,"pre_tokenizer":{},"post_processor":{},"decoder":{{"type":"ByteLevel"}},)"
      R"("model":{{"type":"BPE","dropout":null,"unk_token":null,"fuse_unk":false,)"
      R"("byte_fallback":false,"vocab":{{{}}},"merges":[{}]}}}})",
      end, spec.pre_tokenizer, spec.post_processor, vocab_json, merges);
}

int32_t byte_id(char c) { return static_cast<unsigned char>(c); }

// Minimal little-endian GGUF v3 writer (metadata only).
class GgufMetadataWriter {
 public:
  void string(const std::string& key, const std::string& value) {
    put_key(key, 8);
    put_str(value);
  }
  void u32(const std::string& key, uint32_t value) {
    put_key(key, 4);
    put(value);
  }
  void boolean(const std::string& key, bool value) {
    put_key(key, 7);
    put(static_cast<uint8_t>(value));
  }
  void strings(const std::string& key, const std::vector<std::string>& values) {
    put_key(key, 9);
    put(uint32_t{8});
    put(static_cast<uint64_t>(values.size()));
    for (const auto& v : values) put_str(v);
  }
  void floats(const std::string& key, const std::vector<float>& values) {
    put_key(key, 9);
    put(uint32_t{6});
    put(static_cast<uint64_t>(values.size()));
    for (float v : values) put(v);
  }
  void ints(const std::string& key, const std::vector<int32_t>& values) {
    put_key(key, 9);
    put(uint32_t{5});
    put(static_cast<uint64_t>(values.size()));
    for (int32_t v : values) put(v);
  }
  void save(const std::string& path) const {
    std::string out = "GGUF";
    append(out, uint32_t{3});
    append(out, uint64_t{0});  // tensors
    append(out, n_kv_);
    out += kv_;
    while (out.size() % 32) out += '\0';
    write_text(path, out);
  }

 private:
  template <typename T>
  static void append(std::string& out, T value) {
    char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));
    out.append(bytes, sizeof(T));
  }
  template <typename T>
  void put(T value) {
    append(kv_, value);
  }
  void put_str(const std::string& s) {
    put(static_cast<uint64_t>(s.size()));
    kv_ += s;
  }
  void put_key(const std::string& key, uint32_t type) {
    ++n_kv_;
    put_str(key);
    put(type);
  }
  std::string kv_;
  uint64_t n_kv_ = 0;
};

// A SentencePiece vocabulary as Llama lays it out: <unk>, <s>, </s>, <0x00>..<0xFF>, then
// pieces with scores (higher merges first). Returns the writer with everything but flags.
GgufMetadataWriter sentencepiece_gguf(const std::vector<std::pair<std::string, float>>& pieces) {
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  std::vector<float> scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    tokens.push_back(fmt::format("<0x{:02X}>", b));
    types.push_back(6);
    scores.push_back(0);
  }
  for (const auto& [piece, score] : pieces) {
    tokens.push_back(piece);
    types.push_back(1);
    scores.push_back(score);
  }
  GgufMetadataWriter w;
  w.string("general.architecture", "llama");
  w.string("tokenizer.ggml.model", "llama");
  w.strings("tokenizer.ggml.tokens", tokens);
  w.floats("tokenizer.ggml.scores", scores);
  w.ints("tokenizer.ggml.token_type", types);
  w.u32("tokenizer.ggml.bos_token_id", 1);
  w.u32("tokenizer.ggml.eos_token_id", 2);
  w.u32("tokenizer.ggml.unknown_token_id", 0);
  return w;
}

constexpr int32_t kFirstPiece = 259;  // after <unk>, <s>, </s> and the 256 byte tokens

template <typename F>
double best_seconds(F&& f, int repeats = 3) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    f();
    best = std::min(
        best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

}  // namespace

TEST_CASE("utf8 repair replaces each maximal subpart by one U+FFFD", "[tokenizer]") {
  using attnvar::utf8::repair;
  const std::string fffd = "\xEF\xBF\xBD";
  CHECK(repair("plain ascii") == "plain ascii");
  CHECK(repair("caf\xC3\xA9") == "caf\xC3\xA9");
  // A truncated 4-byte sequence is one subpart; an overlong lead and a stray continuation
  // byte are one each; a surrogate encoding is three (ED is only valid before 80..9F).
  CHECK(repair("a\xF0\x9F\x98z") == "a" + fffd + "z");
  CHECK(repair("\xC0\xAF") == fffd + fffd);
  CHECK(repair("\xED\xA0\x80") == fffd + fffd + fffd);
  CHECK(repair("\xF4\x90\x80\x80") == fffd + fffd + fffd + fffd);
  CHECK(repair("\xE6\x97") == fffd);
  CHECK(repair(std::string("\0\xFF", 2)) == std::string("\0", 1) + fffd);
}

TEST_CASE("render_bytes shows bytes of incomplete sequences as <0xNN>", "[tokenizer]") {
  using attnvar::utf8::render_bytes;
  CHECK(render_bytes(" mat") == " mat");
  CHECK(render_bytes("\xE6\x97") == "<0xE6><0x97>");
  CHECK(render_bytes(" \xE6") == " <0xE6>");
  CHECK(render_bytes("\xA5\xE6\x97\xA5") == "<0xA5>\xE6\x97\xA5");
  CHECK(render_bytes("a\xFF") == "a<0xFF>");
}

TEST_CASE("byte alphabet spells every byte with one printable character", "[tokenizer]") {
  using namespace attnvar::byte_level;
  const auto& a = alphabet();
  std::vector<std::string> sorted(a.begin(), a.end());
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::unique(sorted.begin(), sorted.end()) == sorted.end());
  CHECK(a[' '] == "\xC4\xA0");   // Ġ
  CHECK(a['\n'] == "\xC4\x8A");  // Ċ
  CHECK(a['A'] == "A");
  for (int b = 0; b < 256; ++b) {
    const std::string byte(1, static_cast<char>(b));
    CHECK(to_bytes(to_spelling(byte)) == byte);
  }
  CHECK_FALSE(to_bytes("<|im_start| >").has_value());  // a plain space is outside the alphabet
}

TEST_CASE("byte-level BPE applies merges by rank then leftmost first", "[tokenizer]") {
  ByteLevelSpec spec;
  spec.merges = {{"a", "a"}, {"h", "e"}, {" ", "c"}, {"a", "t"}, {" c", "at"}, {"t", "he"}};
  int32_t end = 0;
  const Tokenizer tok = Tokenizer::from_json(byte_level_json(spec, &end), "hand.json");
  const int32_t aa = 256, he = 257, sp_c = 258, at = 259, sp_cat = 260, the = 261;
  CHECK(tok.family() == attnvar::TokenizerFamily::kByteLevelBpe);
  CHECK(tok.vocab_size() == end + 1);
  // "aaa": (a,a) at positions 0 and 1 tie on rank; the leftmost merges first.
  CHECK(tok.encode("aaa", false) == Ids{aa, byte_id('a')});
  CHECK(tok.encode("aaaa", false) == Ids{aa, aa});
  // "the cat": words "the" and " cat". In "the", (h,e) ranks before (t,he) exists; then
  // (t,he) completes it. In " cat", (" ",c) ranks before (a,t), then (" c",at).
  CHECK(tok.encode("the cat", false) == Ids{the, sp_cat});
  // " that": (h,a)... no merge; (a,t) -> at; " t" never merges.
  CHECK(tok.encode(" that", false) == Ids{byte_id(' '), byte_id('t'), byte_id('h'), at});
  // The special token is matched whole, even glued to words.
  CHECK(tok.encode("cat<|end|>the", false) == Ids{byte_id('c'), at, end, the});
  CHECK(tok.decode(Ids{the, sp_cat, end}) == "the cat<|end|>");
  CHECK(tok.decode(Ids{the, sp_cat, end}, /*skip_special=*/true) == "the cat");
  CHECK(tok.piece(sp_cat) == " cat");
  CHECK(tok.piece(sp_c) == " c");
  CHECK(tok.piece(end) == "<|end|>");
  CHECK(tok.piece(0xE6) == "<0xE6>");
  CHECK(tok.piece(he) == "he");
  CHECK(tok.id_to_token(sp_cat) ==
        "\xC4\xA0"
        "cat");  // "Ġcat"
  CHECK(tok.token_to_id("\xC4\xA0"
                        "cat") == sp_cat);
  CHECK_FALSE(tok.token_to_id(" cat").has_value());
  // No post-processor and byte-level: no BOS.
  CHECK_FALSE(tok.add_bos());
  CHECK(tok.encode("the", true) == tok.encode("the", false));
  // Lossless, including text the vocabulary only knows as bytes.
  for (const std::string text : {"the cat", "  x\n\n\ty", "日本語 😀", "<|end|><|end|>"}) {
    CHECK(tok.decode(tok.encode(text, false)) == text);
  }
}

TEST_CASE("ill-formed UTF-8 input is encoded as its U+FFFD repair", "[tokenizer]") {
  ByteLevelSpec spec;
  spec.merges = {{"a", "b"}};
  const Tokenizer tok = Tokenizer::from_json(byte_level_json(spec), "hand.json");
  const std::string fffd = "\xEF\xBF\xBD";
  CHECK(tok.encode("ab\xFF"
                   "ab",
                   false) == tok.encode("ab" + fffd + "ab", false));
  CHECK(tok.decode(tok.encode("\xE6\x97", false)) == fffd);
  std::mt19937 rng(42);
  for (int i = 0; i < 500; ++i) {
    std::string bytes(rng() % 64, '\0');
    for (char& c : bytes) c = static_cast<char>(rng() & 0xFF);
    const Ids ids = tok.encode(bytes, false);
    CHECK(ids == tok.encode(attnvar::utf8::repair(bytes), false));
    CHECK(attnvar::utf8::is_valid(tok.decode(ids)));
  }
}

TEST_CASE("post-processor template adds BOS and add_bos overrides it", "[tokenizer]") {
  ByteLevelSpec spec;
  int32_t end = 0;
  byte_level_json(spec, &end);  // learn the id of <|end|> for the template
  spec.post_processor = fmt::format(
      R"({{"type":"TemplateProcessing","single":[{{"SpecialToken":{{"id":"<|end|>","type_id":0}}}},)"
      R"({{"Sequence":{{"id":"A","type_id":0}}}}],"pair":[],"special_tokens":{{"<|end|>":)"
      R"({{"id":"<|end|>","ids":[{}],"tokens":["<|end|>"]}}}}}})",
      end);
  Tokenizer tok = Tokenizer::from_json(byte_level_json(spec), "template.json");
  CHECK(tok.bos_id() == end);
  CHECK(tok.add_bos());
  CHECK(tok.encode("x", true) == Ids{end, byte_id('x')});
  tok.set_add_bos(false);
  CHECK(tok.encode("x", true) == Ids{byte_id('x')});
  tok.set_add_bos(true);
  CHECK(tok.encode("x", true) == Ids{end, byte_id('x')});
  // Without a BOS id there is nothing to add.
  Tokenizer plain = Tokenizer::from_json(byte_level_json({}), "plain.json");
  CHECK_FALSE(plain.bos_id().has_value());
  CHECK_THROWS_AS(plain.set_add_bos(true), ConfigError);
}

TEST_CASE("GGUF SentencePiece vocabulary merges by piece score", "[tokenizer]") {
  // Pieces (ids from 259): ▁, a, b, c, ab, bc, abc, ▁abc. "bc" outscores "ab", so "abc" is
  // reached through a + bc; with the scores swapped, through ab + c. Either way the word
  // " abc" ends as the single piece "▁abc" (merged from ▁ + abc).
  const std::string sp = "\xE2\x96\x81";  // ▁
  auto build = [&](float ab_score, float bc_score, bool add_space_prefix) {
    GgufMetadataWriter w = sentencepiece_gguf({{sp, -100},
                                               {"a", -101},
                                               {"b", -102},
                                               {"c", -103},
                                               {"ab", ab_score},
                                               {"bc", bc_score},
                                               {"abc", -3},
                                               {sp + "abc", -4}});
    w.boolean("tokenizer.ggml.add_space_prefix", add_space_prefix);
    const std::string path = tok_tmp_path("spm.gguf");
    w.save(path);
    return Tokenizer::from_gguf_file(path);
  };
  const int32_t p_sp = kFirstPiece, p_a = kFirstPiece + 1, p_b = kFirstPiece + 2,
                p_c = kFirstPiece + 3, p_ab = kFirstPiece + 4, p_bc = kFirstPiece + 5,
                p_sp_abc = kFirstPiece + 7;
  const Tokenizer bc_first = build(-2, -1, true);
  CHECK(bc_first.family() == attnvar::TokenizerFamily::kSentencePieceBpe);
  CHECK(bc_first.encode("abc", false) == Ids{p_sp_abc});
  CHECK(bc_first.encode("abcb", false) == Ids{p_sp_abc, p_b});
  // "bca": b+c first (bc outscores ab, and ab does not occur) -> ▁, bc, a.
  CHECK(bc_first.encode("bca", false) == Ids{p_sp, p_bc, p_a});
  // "abab": ab+ab; "cab": (c,a) is no piece, so ab.
  CHECK(bc_first.encode("cab", false) == Ids{p_sp, p_c, p_ab});
  // Without the dummy prefix, "ab c": a b, ▁ c.
  const Tokenizer no_prefix = build(-1, -2, false);
  CHECK(no_prefix.encode("ab c", false) == Ids{p_ab, p_sp, p_c});
  // With "ab" best, "abc" goes ab + c -> abc (the other split, a + bc, never forms).
  CHECK(no_prefix.encode("abc", false) == Ids{kFirstPiece + 6});
  // Unknown characters fall back to bytes; pieces show "▁" as a space and partial bytes as hex.
  CHECK(bc_first.encode("\xC3\xA9", false) == Ids{p_sp, 3 + 0xC3, 3 + 0xA9});
  CHECK(bc_first.decode(bc_first.encode("ab \xC3\xA9 c", false)) == "ab \xC3\xA9 c");
  CHECK(bc_first.piece(p_sp_abc) == " abc");
  CHECK(bc_first.piece(3 + 0xC3) == "<0xC3>");
  CHECK(bc_first.piece(3 + 0x41) == "A");
  CHECK(bc_first.piece(1) == "<s>");
  // No add_bos_token key: SentencePiece gets BOS; the special token text is matched whole.
  CHECK(bc_first.add_bos());
  CHECK(bc_first.encode("a", true) == Ids{1, p_sp, p_a});
  CHECK(bc_first.encode("<s>a", false) == Ids{1, p_sp, p_a});
  CHECK(bc_first.eos_ids() == Ids{2});
}

TEST_CASE("GGUF byte-level vocabulary uses the pre-tokenizer it names", "[tokenizer]") {
  using attnvar::byte_level::to_spelling;
  auto build = [](const std::string& pre) {
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b)
      tokens.push_back(to_spelling(std::string(1, static_cast<char>(b))));
    tokens.push_back(to_spelling("12"));
    tokens.push_back("<|im_end|>");
    GgufMetadataWriter w;
    w.string("general.architecture", "llama");
    w.string("tokenizer.ggml.model", "gpt2");
    if (!pre.empty()) w.string("tokenizer.ggml.pre", pre);
    w.strings("tokenizer.ggml.tokens", tokens);
    std::vector<int32_t> types(tokens.size(), 1);
    types.back() = 3;
    w.ints("tokenizer.ggml.token_type", types);
    w.strings("tokenizer.ggml.merges", {"1 2"});
    w.u32("tokenizer.ggml.eos_token_id", 257);
    const std::string path = tok_tmp_path("byte_level.gguf");
    w.save(path);
    return Tokenizer::from_gguf_file(path);
  };
  // "smollm" splits digits one by one before the GPT-2 regex, so "12" never merges.
  CHECK(build("smollm").encode("x12", false) == Ids{byte_id('x'), byte_id('1'), byte_id('2')});
  CHECK(build("gpt-2").encode("x12", false) == Ids{byte_id('x'), 256});
  CHECK(build("").encode("x12", false) == Ids{byte_id('x'), 256});  // absent: GPT-2's regex
  const Tokenizer t = build("qwen2");
  CHECK(t.encode("12<|im_end|>", true) == Ids{byte_id('1'), byte_id('2'), 257});
  CHECK_FALSE(t.add_bos());
  CHECK(t.eos_ids() == Ids{257});
  try {
    build("no-such-pre");
    FAIL("expected ConfigError");
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    CHECK(what.find("byte_level.gguf") != std::string::npos);
    CHECK(what.find("tokenizer.ggml.pre") != std::string::npos);
    CHECK(what.find("smollm") != std::string::npos);  // lists the supported names
  }
}

TEST_CASE("tokenizer errors name the file and the field", "[tokenizer]") {
  CHECK_THROWS_AS(Tokenizer::from_json_file(tok_tmp_path("absent/tokenizer.json")), MissingError);
  CHECK_THROWS_AS(Tokenizer::from_gguf_file(tok_tmp_path("absent.gguf")), MissingError);
  const std::string bad_json = tok_tmp_path("bad.json");
  write_text(bad_json, "{\"model\": ");
  CHECK_THROWS_AS(Tokenizer::from_json_file(bad_json), FormatError);
  auto message = [](const std::string& json) {
    try {
      Tokenizer::from_json(json, "cfg.json");
    } catch (const attnvar::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  auto mentions = [](const std::string& what, const std::string& field) {
    INFO(what);
    CHECK(what.find(field) != std::string::npos);
  };
  mentions(message(R"({"model":{"type":"WordPiece","vocab":{}}})"), "cfg.json: model.type");
  mentions(message(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[["a","b"]]}})"),
           "cfg.json: model.merges[0]");
  mentions(message(R"({"model":{"type":"BPE","vocab":{},"merges":[]},"pre_tokenizer":)"
                   R"({"type":"Sequence","pretokenizers":[{"type":"BertPreTokenizer"}]}})"),
           "cfg.json: pre_tokenizer.pretokenizers[0]");
  mentions(message(R"({"model":{"type":"BPE","vocab":{},"merges":[]},)"
                   R"("pre_tokenizer":{"type":"Split","pattern":{"Regex":"(unclosed"},)"
                   R"("behavior":"Isolated","invert":false}})"),
           "cfg.json: pre_tokenizer.pattern");
  const Tokenizer tok = Tokenizer::from_json(byte_level_json({}), "ok.json");
  CHECK_THROWS_AS(tok.decode(Ids{100000}), ConfigError);
  CHECK_THROWS_AS(tok.piece(-1), ConfigError);
}

TEST_CASE("encode is thread-safe and deterministic", "[tokenizer]") {
  ByteLevelSpec spec;
  spec.merges = {{"t", "h"}, {"th", "e"}, {" ", "th"}, {" th", "e"}};
  const Tokenizer tok = Tokenizer::from_json(byte_level_json(spec), "threads.json");
  std::string text;
  for (int i = 0; i < 2000; ++i) text += fmt::format("the theme {} thee other ", i);
  const Ids expected = tok.encode(text, false);
  std::vector<Ids> results(4);
  std::vector<std::thread> threads;
  for (auto& r : results) threads.emplace_back([&] { r = tok.encode(text, false); });
  for (auto& t : threads) t.join();
  for (const Ids& r : results) CHECK(r == expected);
}

TEST_CASE("encode time grows roughly linearly also on pathological input", "[tokenizer]") {
  ByteLevelSpec spec;
  spec.merges = {{"a", "b"}, {"ab", "ab"}, {" ", " "}, {"  ", "  "}, {"1", "1"}};
  spec.pre_tokenizer =
      R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},)"
      R"({"type":"ByteLevel","add_prefix_space":false,"use_regex":true}]})";
  const Tokenizer byte_level = Tokenizer::from_json(byte_level_json(spec), "linear.json");
  // SentencePiece without a pre-tokenizer: the whole input is one BPE word.
  const std::string sp = "\xE2\x96\x81";
  GgufMetadataWriter w = sentencepiece_gguf(
      {{sp, -10}, {"a", -11}, {"b", -12}, {"ab", -1}, {"abab", -2}, {sp + "ab", -3}});
  const std::string path = tok_tmp_path("linear.gguf");
  w.save(path);
  const Tokenizer sentencepiece = Tokenizer::from_gguf_file(path);

  std::mt19937 rng(7);
  auto words = [&](std::size_t n) {
    std::string s;
    while (s.size() < n) {
      const int len = 1 + static_cast<int>(rng() % 10);
      for (int i = 0; i < len; ++i) s += static_cast<char>('a' + rng() % 26);
      s += rng() % 7 == 0 ? "\n" : " ";
    }
    return s.substr(0, n);
  };
  auto repeat = [](const std::string& unit, std::size_t n) {
    std::string s;
    while (s.size() < n) s += unit;
    return s.substr(0, n);
  };
  struct Case {
    const char* name;
    std::function<std::string(std::size_t)> make;
    const Tokenizer* tok;
  };
  const std::vector<Case> cases = {
      {"random words", words, &byte_level},
      {"one long word", [&](std::size_t n) { return repeat("ab", n); }, &byte_level},
      {"spaces", [&](std::size_t n) { return repeat(" ", n); }, &byte_level},
      {"digits", [&](std::size_t n) { return repeat("1", n); }, &byte_level},
      {"CJK run", [&](std::size_t n) { return repeat("\xE6\x97\xA5", n); }, &byte_level},
      {"one SentencePiece word", [&](std::size_t n) { return repeat("ab", n); }, &sentencepiece},
  };
  constexpr std::size_t kSmall = 256 * 1024;
  constexpr std::size_t kLarge = 1024 * 1024;
  for (const Case& c : cases) {
    const std::string small = c.make(kSmall);
    const std::string large = c.make(kLarge);
    const double t_small = best_seconds([&] { return c.tok->encode(small, false); });
    const double t_large = best_seconds([&] { return c.tok->encode(large, false); });
    INFO(fmt::format("{}: 256 KiB {:.1f} ms, 1 MiB {:.1f} ms", c.name, t_small * 1e3,
                     t_large * 1e3));
    // 4x the input: linear is ~4x, quadratic 16x. Generous for noisy shared machines.
    CHECK(t_large < 10 * t_small + 0.05);
  }
}

TEST_CASE("NFC composes, reorders marks and keeps exclusions decomposed", "[tokenizer]") {
  const attnvar::NfcNormalizer nfc;
  auto norm = [&](std::string s) {
    nfc.normalize(s);
    return s;
  };
  CHECK(norm("plain ascii") == "plain ascii");
  CHECK(norm("e\xCC\x81") == "\xC3\xA9");     // e + U+0301 -> é
  CHECK(norm("\xE2\x84\xAB") == "\xC3\x85");  // U+212B ANGSTROM SIGN -> Å (singleton)
  CHECK(norm("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB") == "\xED\x95\x9C");  // jamo -> 한
  CHECK(norm("\xE0\xA5\x98") == "\xE0\xA4\x95\xE0\xA4\xBC");  // U+0958 is a composition exclusion
  // a + grave (230) + dot below (220): reordered to dot below first, which composes with a
  // to U+1EA1 (ạ); ạ + grave has no composite, so the grave stays.
  CHECK(norm("a\xCC\x80\xCC\xA3") == "\xE1\xBA\xA1\xCC\x80");
}

// The GGUF reader on files written by the test: well-formed files read back exactly;
// malformed ones (truncated, wrong magic, lengths and offsets past the end, unknown
// types, missing keys) raise the right exception naming the file and the field, never
// crash. Also config_from_gguf and load_weights on a tiny llama written here.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/model/gguf.h"
#include "attnvar/model/weights.h"
#include "attnvar/tokenizer/utf8.h"
#include "catch_compat.h"
#include "tensor_compare.h"

namespace fs = std::filesystem;
using attnvar::ConfigError;
using attnvar::FormatError;
using attnvar::GgmlType;
using attnvar::GgufFile;
using attnvar::MissingError;

namespace {

std::string tmp_path(const std::string& name) {
  fs::create_directories(ATTNVAR_TEST_TMPDIR);
  return (fs::path(ATTNVAR_TEST_TMPDIR) / name).string();
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Little-endian GGUF writer for tests. Fields are appended in file order; `raw` lets a
// test write anything (including lies) where a field would go.
struct GgufBuilder {
  std::vector<uint8_t> kv;  // the key/value section
  uint64_t n_kv = 0;
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset_override;
  };
  std::vector<Tensor> tensors;
  uint32_t version = 3;
  uint64_t alignment = 32;
  std::string magic = "GGUF";

  template <typename T>
  static void put(std::vector<uint8_t>& b, T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
  }
  static void put_str(std::vector<uint8_t>& b, const std::string& s) {
    put<uint64_t>(b, s.size());
    b.insert(b.end(), s.begin(), s.end());
  }
  void key(const std::string& k, uint32_t type) {
    put_str(kv, k);
    put<uint32_t>(kv, type);
    ++n_kv;
  }
  void u32(const std::string& k, uint32_t v) { key(k, 4), put<uint32_t>(kv, v); }
  void i32(const std::string& k, int32_t v) { key(k, 5), put<int32_t>(kv, v); }
  void u64(const std::string& k, uint64_t v) { key(k, 10), put<uint64_t>(kv, v); }
  void f32(const std::string& k, float v) { key(k, 6), put<float>(kv, v); }
  void f64(const std::string& k, double v) { key(k, 12), put<double>(kv, v); }
  void boolean(const std::string& k, bool v) { key(k, 7), put<uint8_t>(kv, v ? 1 : 0); }
  void str(const std::string& k, const std::string& v) { key(k, 8), put_str(kv, v); }
  void str_array(const std::string& k, const std::vector<std::string>& v) {
    key(k, 9);
    put<uint32_t>(kv, 8);
    put<uint64_t>(kv, v.size());
    for (const auto& s : v) put_str(kv, s);
  }
  void i32_array(const std::string& k, const std::vector<int32_t>& v) {
    key(k, 9);
    put<uint32_t>(kv, 5);
    put<uint64_t>(kv, v.size());
    for (int32_t x : v) put<int32_t>(kv, x);
  }
  void f32_array(const std::string& k, const std::vector<float>& v) {
    key(k, 9);
    put<uint32_t>(kv, 6);
    put<uint64_t>(kv, v.size());
    for (float x : v) put<float>(kv, x);
  }
  // An F32 tensor; `ne` in GGUF order (ne[0] fastest).
  void tensor_f32(const std::string& name, std::vector<uint64_t> ne, const std::vector<float>& v) {
    Tensor t{name, std::move(ne), 0, {}, std::nullopt};
    t.data.resize(v.size() * 4);
    std::memcpy(t.data.data(), v.data(), t.data.size());
    tensors.push_back(std::move(t));
  }
  void tensor_raw(const std::string& name, std::vector<uint64_t> ne, uint32_t type,
                  std::vector<uint8_t> data) {
    tensors.push_back({name, std::move(ne), type, std::move(data), std::nullopt});
  }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> b(magic.begin(), magic.end());
    put<uint32_t>(b, version);
    put<uint64_t>(b, tensors.size());
    put<uint64_t>(b, n_kv);
    b.insert(b.end(), kv.begin(), kv.end());
    uint64_t offset = 0;
    std::vector<uint64_t> offsets;
    for (const auto& t : tensors) {
      offsets.push_back(t.offset_override.value_or(offset));
      offset += (t.data.size() + alignment - 1) / alignment * alignment;
    }
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      put_str(b, t.name);
      put<uint32_t>(b, static_cast<uint32_t>(t.ne.size()));
      for (uint64_t n : t.ne) put<uint64_t>(b, n);
      put<uint32_t>(b, t.type);
      put<uint64_t>(b, offsets[i]);
    }
    b.resize((b.size() + alignment - 1) / alignment * alignment, 0);
    for (size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      b.resize((b.size() + alignment - 1) / alignment * alignment, 0);
      b.insert(b.end(), t.data.begin(), t.data.end());
    }
    return b;
  }
  std::string write(const std::string& name) const {
    const std::string path = tmp_path(name);
    write_bytes(path, bytes());
    return path;
  }
};

// Expects `fn` to throw E whose message contains every one of `needles`.
template <typename E>
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    FAIL("no exception; expected one mentioning " << needles.front());
  } catch (const E& e) {
    const std::string what = e.what();
    INFO("message: " << what);
    for (const auto& n : needles) CHECK(what.find(n) != std::string::npos);
  }
}

GgufBuilder small_file() {
  GgufBuilder g;
  g.str("general.architecture", "llama");
  g.u32("llama.block_count", 2);
  g.i32("signed", -7);
  g.u64("big", 1ull << 40);
  g.f32("eps", 1e-5f);
  g.f64("theta", 500000.0);
  g.boolean("flag", true);
  g.str_array("tokens", {"a", "bc", ""});
  g.i32_array("ids", {3, -1, 4});
  g.f32_array("scores", {0.5f, -1.0f});
  g.tensor_f32("w", {3, 2}, {0, 1, 2, 3, 4, 5});
  g.tensor_raw("q", {32, 1}, static_cast<uint32_t>(GgmlType::Q8_0), std::vector<uint8_t>(34, 1));
  return g;
}

}  // namespace

TEST_CASE("gguf: metadata and tensors of a well-formed file read back", "[gguf]") {
  const std::string path = small_file().write("small.gguf");
  GgufFile f(path);
  CHECK(f.version() == 3);
  CHECK(f.path() == path);
  CHECK(f.keys().size() == 10);
  CHECK(f.keys()[0] == "general.architecture");
  CHECK(f.get_string("general.architecture") == "llama");
  CHECK(f.get_int("llama.block_count") == 2);
  CHECK(f.get_int("signed") == -7);
  CHECK(f.get_int("big") == (int64_t{1} << 40));
  CHECK(f.get_float("eps") == 1e-5);  // shortest decimal form of the f32
  CHECK(f.get_float("theta") == 500000.0);
  CHECK(f.get_float("llama.block_count") == 2.0);  // ints are numbers too
  CHECK(f.get_bool("flag") == true);
  CHECK(f.get_string_array("tokens") == std::vector<std::string>{"a", "bc", ""});
  CHECK(f.get_int_array("ids") == std::vector<int64_t>{3, -1, 4});
  CHECK(f.get_float_array("scores") == std::vector<double>{0.5, -1.0});
  CHECK(f.get_float_array("ids") == std::vector<double>{3, -1, 4});
  CHECK(f.array_size("tokens") == size_t{3});
  CHECK_FALSE(f.has("absent"));
  CHECK_FALSE(f.get_int("absent").has_value());
  CHECK_FALSE(f.get_string_array("absent").has_value());

  REQUIRE(f.tensors().size() == 2);
  const auto* w = f.find_tensor("w");
  REQUIRE(w != nullptr);
  CHECK(w->shape == std::vector<int64_t>{3, 2});
  CHECK(w->type == 0);
  CHECK(w->nbytes == 24);
  CHECK(w->offset % 32 == 0);
  float v[6];
  std::memcpy(v, f.tensor_data(*w), 24);
  CHECK(v[5] == 5.0f);
  const auto* q = f.find_tensor("q");
  REQUIRE(q != nullptr);
  CHECK(q->nbytes == 34);
  CHECK(q->offset == w->offset + 32);
  CHECK(f.find_tensor("absent") == nullptr);
}

TEST_CASE("gguf: a typed getter on a value of another type names the key", "[gguf]") {
  GgufFile f(small_file().write("types.gguf"));
  expect_error<FormatError>(
      [&] { f.get_int("general.architecture"); },
      {"types.gguf", "general.architecture", "expected an integer", "string"});
  expect_error<FormatError>([&] { f.get_string("llama.block_count"); },
                            {"llama.block_count", "uint32"});
  expect_error<FormatError>([&] { f.get_string_array("ids"); }, {"'ids'", "array of int32"});
  expect_error<FormatError>([&] { f.get_bool("eps"); }, {"'eps'"});
  expect_error<FormatError>([&] { f.get_float("tokens"); }, {"'tokens'"});
}

TEST_CASE("gguf: general.alignment moves the data section", "[gguf]") {
  GgufBuilder g = small_file();
  g.alignment = 64;
  g.u32("general.alignment", 64);
  GgufFile f(g.write("align64.gguf"));
  CHECK(f.alignment() == 64);
  CHECK(f.find_tensor("w")->offset % 64 == 0);
  CHECK(f.find_tensor("q")->offset == f.find_tensor("w")->offset + 64);

  GgufBuilder bad = small_file();
  bad.u32("general.alignment", 48);
  expect_error<FormatError>([&] { GgufFile x(bad.write("align48.gguf")); },
                            {"align48.gguf", "general.alignment", "power of two"});
}

TEST_CASE("gguf: missing, empty and non-GGUF files", "[gguf]") {
  expect_error<MissingError>([] { GgufFile f(tmp_path("does_not_exist.gguf")); },
                             {"does_not_exist.gguf"});
  write_bytes(tmp_path("empty.gguf"), {});
  expect_error<FormatError>([] { GgufFile f(tmp_path("empty.gguf")); }, {"empty.gguf", "empty"});
  GgufBuilder g = small_file();
  g.magic = "GGUX";
  expect_error<FormatError>([&] { GgufFile f(g.write("magic.gguf")); },
                            {"magic.gguf", "magic", "not a GGUF file"});
  g.magic = "GGUF";
  g.version = 1;
  expect_error<FormatError>([&] { GgufFile f(g.write("v1.gguf")); }, {"v1.gguf", "version 1"});
  write_bytes(tmp_path("short.gguf"), {'G', 'G', 'U', 'F', 3, 0, 0, 0, 0});
  expect_error<FormatError>([] { GgufFile f(tmp_path("short.gguf")); }, {"short.gguf", "header"});
}

TEST_CASE("gguf: counts, strings and arrays longer than the file are rejected before reading",
          "[gguf]") {
  {  // a kv count no file this size could hold
    auto b = small_file().bytes();
    const uint64_t huge = 1ull << 60;
    std::memcpy(&b[16], &huge, 8);
    write_bytes(tmp_path("nkv.gguf"), b);
    expect_error<FormatError>([] { GgufFile f(tmp_path("nkv.gguf")); },
                              {"nkv.gguf", "metadata_kv_count"});
  }
  {  // a tensor count likewise
    auto b = small_file().bytes();
    const uint64_t huge = 1ull << 50;
    std::memcpy(&b[8], &huge, 8);
    write_bytes(tmp_path("ntensor.gguf"), b);
    expect_error<FormatError>([] { GgufFile f(tmp_path("ntensor.gguf")); },
                              {"ntensor.gguf", "tensor_count"});
  }
  {  // a string value whose length runs past the end
    GgufBuilder g;
    g.str("general.name", "abc");
    auto b = g.bytes();
    // value length sits after magic/version/counts (24), key (8 + 12) and type (4).
    const uint64_t len = 1ull << 40;
    std::memcpy(&b[24 + 8 + 12 + 4], &len, 8);
    write_bytes(tmp_path("strlen.gguf"), b);
    expect_error<FormatError>([] { GgufFile f(tmp_path("strlen.gguf")); },
                              {"strlen.gguf", "general.name", "string length"});
  }
  {  // an array whose count runs past the end
    GgufBuilder g;
    g.i32_array("ids", {1, 2, 3});
    auto b = g.bytes();
    const uint64_t n = 1ull << 40;
    std::memcpy(&b[24 + 8 + 3 + 4 + 4], &n, 8);
    write_bytes(tmp_path("arrlen.gguf"), b);
    expect_error<FormatError>([] { GgufFile f(tmp_path("arrlen.gguf")); },
                              {"arrlen.gguf", "'ids'", "array length"});
  }
  {  // an unknown value type
    GgufBuilder g;
    g.key("odd", 99);
    GgufBuilder::put<uint32_t>(g.kv, 0);
    expect_error<FormatError>([&] { GgufFile f(g.write("vtype.gguf")); },
                              {"vtype.gguf", "'odd'", "unknown value type 99"});
  }
}

TEST_CASE("gguf: bad tensor infos name the tensor", "[gguf]") {
  {
    GgufBuilder g;
    g.tensor_raw("mystery", {4}, 77, std::vector<uint8_t>(16));
    expect_error<FormatError>([&] { GgufFile f(g.write("ttype.gguf")); },
                              {"ttype.gguf", "'mystery'", "unknown tensor type 77"});
  }
  {  // data declared beyond the end of the file
    GgufBuilder g;
    g.tensor_f32("a", {4}, {1, 2, 3, 4});
    g.tensors[0].offset_override = 4096;
    expect_error<FormatError>([&] { GgufFile f(g.write("toff.gguf")); },
                              {"toff.gguf", "'a'", "past the end"});
  }
  {  // the file cut inside the last tensor's data
    auto b = small_file().bytes();
    b.resize(b.size() - 10);
    write_bytes(tmp_path("tcut.gguf"), b);
    expect_error<FormatError>([] { GgufFile f(tmp_path("tcut.gguf")); },
                              {"tcut.gguf", "'q'", "past the end"});
  }
  {  // two tensors sharing bytes
    GgufBuilder g;
    g.tensor_f32("a", {16}, std::vector<float>(16, 1));
    g.tensor_f32("b", {16}, std::vector<float>(16, 2));
    g.tensors[1].offset_override = 32;
    expect_error<FormatError>([&] { GgufFile f(g.write("overlap.gguf")); },
                              {"overlap.gguf", "overlaps"});
  }
  {
    GgufBuilder g;
    g.tensor_f32("a", {4}, {1, 2, 3, 4});
    g.tensors[0].offset_override = 8;
    expect_error<FormatError>([&] { GgufFile f(g.write("misalign.gguf")); },
                              {"misalign.gguf", "'a'", "alignment"});
  }
  {
    GgufBuilder g;
    g.tensor_raw("q", {16}, static_cast<uint32_t>(GgmlType::Q8_0), std::vector<uint8_t>(34));
    expect_error<FormatError>([&] { GgufFile f(g.write("rowlen.gguf")); },
                              {"rowlen.gguf", "'q'", "block size 32"});
  }
  {
    GgufBuilder g;
    g.tensor_f32("a", {1, 1, 1, 1, 4}, {1, 2, 3, 4});
    expect_error<FormatError>([&] { GgufFile f(g.write("ndims.gguf")); },
                              {"ndims.gguf", "'a'", "n_dims 5"});
  }
  {
    GgufBuilder g;
    g.tensor_f32("a", {4}, {1, 2, 3, 4});
    g.tensor_f32("a", {4}, {1, 2, 3, 4});
    expect_error<FormatError>([&] { GgufFile f(g.write("dup.gguf")); },
                              {"dup.gguf", "'a'", "twice"});
  }
}

TEST_CASE("gguf: every truncation of a valid file is a FormatError", "[gguf]") {
  const auto full = small_file().bytes();
  const std::string path = tmp_path("prefix.gguf");
  int errors = 0;
  for (size_t n = 1; n < full.size(); ++n) {
    write_bytes(path, std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(n)));
    try {
      GgufFile f(path);
    } catch (const FormatError& e) {
      ++errors;
      CHECK(std::string(e.what()).find("prefix.gguf") != std::string::npos);
    }
  }
  CHECK(errors == static_cast<int>(full.size()) - 1);
}

TEST_CASE("gguf: corrupted header bytes give FormatError or a valid file, never a crash",
          "[gguf]") {
  const auto full = small_file().bytes();
  const std::string path = tmp_path("fuzz.gguf");
  std::mt19937 rng(1234);
  // The metadata and tensor infos: the part a corrupt byte can make lie about sizes.
  std::uniform_int_distribution<size_t> where(0, full.size() - 64);
  std::uniform_int_distribution<int> byte(0, 255);
  int opened = 0, rejected = 0;
  for (int trial = 0; trial < 300; ++trial) {
    auto b = full;
    for (int k = 0; k < 3; ++k) b[where(rng)] = static_cast<uint8_t>(byte(rng));
    write_bytes(path, b);
    try {
      GgufFile f(path);
      for (const auto& t : f.tensors()) {
        const uint8_t* p = f.tensor_data(t);
        volatile uint8_t sink = t.nbytes ? p[t.nbytes - 1] : 0;  // last byte is readable
        (void)sink;
      }
      ++opened;
    } catch (const FormatError&) {
      ++rejected;
    }
  }
  CHECK(opened + rejected == 300);
  CHECK(rejected > 0);
}

// ---- config_from_gguf and load_weights on a tiny llama -------------------------------------

namespace {

constexpr int64_t kHidden = 8, kHeads = 2, kKvHeads = 1, kHeadDim = 4, kFfn = 12, kVocab = 10;

std::vector<float> ramp(int64_t n, float scale) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = scale * static_cast<float>(i % 97);
  return v;
}

// One-layer llama; `skip` names a key or tensor to leave out.
GgufBuilder tiny_llama(const std::string& skip = "") {
  GgufBuilder g;
  auto u32 = [&](const std::string& k, uint32_t v) {
    if (k != skip) g.u32(k, v);
  };
  if (skip != "general.architecture") g.str("general.architecture", "llama");
  u32("llama.block_count", 1);
  u32("llama.embedding_length", kHidden);
  u32("llama.feed_forward_length", kFfn);
  u32("llama.attention.head_count", kHeads);
  u32("llama.attention.head_count_kv", kKvHeads);
  u32("llama.context_length", 64);
  if (skip != "llama.attention.layer_norm_rms_epsilon") {
    g.f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  }
  g.f32("llama.rope.freq_base", 10000.0f);
  std::vector<std::string> tokens;
  for (int i = 0; i < kVocab; ++i) tokens.push_back(fmt::format("t{}", i));
  g.str_array("tokenizer.ggml.tokens", tokens);
  u32("tokenizer.ggml.bos_token_id", 1);
  u32("tokenizer.ggml.eos_token_id", 2);
  auto t = [&](const std::string& name, std::vector<uint64_t> ne) {
    if (name == skip) return;
    int64_t n = 1;
    for (auto x : ne) n *= static_cast<int64_t>(x);
    g.tensor_f32(name, std::move(ne), ramp(n, 0.01f * static_cast<float>(g.tensors.size() + 1)));
  };
  t("token_embd.weight", {kHidden, kVocab});
  t("blk.0.attn_norm.weight", {kHidden});
  t("blk.0.attn_q.weight", {kHidden, kHeads * kHeadDim});
  t("blk.0.attn_k.weight", {kHidden, kKvHeads * kHeadDim});
  t("blk.0.attn_v.weight", {kHidden, kKvHeads * kHeadDim});
  t("blk.0.attn_output.weight", {kHeads * kHeadDim, kHidden});
  t("blk.0.ffn_norm.weight", {kHidden});
  t("blk.0.ffn_gate.weight", {kHidden, kFfn});
  t("blk.0.ffn_up.weight", {kHidden, kFfn});
  t("blk.0.ffn_down.weight", {kFfn, kHidden});
  t("output_norm.weight", {kHidden});
  return g;
}

}  // namespace

TEST_CASE("gguf: config_from_gguf reads the llama keys", "[gguf]") {
  GgufFile f(tiny_llama().write("tiny_cfg.gguf"));
  auto c = attnvar::config_from_gguf(f);
  CHECK(c.model_type == "llama");
  CHECK(c.num_hidden_layers == 1);
  CHECK(c.hidden_size == kHidden);
  CHECK(c.intermediate_size == kFfn);
  CHECK(c.num_attention_heads == kHeads);
  CHECK(c.num_key_value_heads == kKvHeads);
  CHECK(c.head_dim == kHeadDim);
  CHECK(c.vocab_size == kVocab);
  CHECK(c.max_position_embeddings == 64);
  CHECK(c.rms_norm_eps == 1e-5);
  CHECK(c.rope_theta == 10000.0);
  CHECK(c.tie_word_embeddings);  // no output.weight
  CHECK(c.bos_token_id == 1);
  CHECK(c.eos_token_ids == std::vector<int64_t>{2});
}

TEST_CASE("gguf: a missing required key or unsupported architecture names the file and key",
          "[gguf]") {
  for (const std::string key :
       {"llama.block_count", "llama.embedding_length", "llama.attention.head_count",
        "llama.context_length", "llama.attention.layer_norm_rms_epsilon", "general.architecture"}) {
    const std::string path = tiny_llama(key).write("nokey.gguf");
    GgufFile f(path);
    expect_error<FormatError>([&] { attnvar::config_from_gguf(f); }, {"nokey.gguf", key});
  }
  GgufBuilder g = tiny_llama("general.architecture");
  g.str("general.architecture", "gpt2");
  GgufFile f(g.write("gpt2.gguf"));
  expect_error<ConfigError>([&] { attnvar::config_from_gguf(f); },
                            {"gpt2.gguf", "general.architecture", "gpt2"});
}

TEST_CASE("gguf: load_weights maps names, un-permutes llama q/k and checks every tensor",
          "[gguf]") {
  const std::string path = tiny_llama().write("tiny.gguf");
  auto w = attnvar::load_weights(path);
  CHECK(w.identity.format == "gguf");
  CHECK(w.identity.quantization == "F32");
  CHECK(w.identity.sha256.size() == 64);
  CHECK(w.tensors.size() == 11);
  CHECK(w.tensors.count("lm_head.weight") == 0);  // tied
  GgufFile f(path);
  const auto& q = w.tensors.at("model.layers.0.self_attn.q_proj.weight");
  CHECK(q.sizes() == at::IntArrayRef{kHeads * kHeadDim, kHidden});
  // Within each head, stored rows (2i, 2i + 1) are HF rows (i, i + head_dim / 2).
  at::Tensor raw = attnvar::gguf_tensor_to_f32(f, *f.find_tensor("blk.0.attn_q.weight"));
  for (int64_t h = 0; h < kHeads; ++h) {
    for (int64_t i = 0; i < kHeadDim / 2; ++i) {
      CHECK(at::equal(q[h * kHeadDim + i], raw[h * kHeadDim + 2 * i]));
      CHECK(at::equal(q[h * kHeadDim + i + kHeadDim / 2], raw[h * kHeadDim + 2 * i + 1]));
    }
  }
  at::Tensor raw_k = attnvar::gguf_tensor_to_f32(f, *f.find_tensor("blk.0.attn_k.weight"));
  const auto& k = w.tensors.at("model.layers.0.self_attn.k_proj.weight");
  CHECK(at::equal(k[1], raw_k[2]));
  CHECK(at::equal(k[2], raw_k[1]));
  // v is not permuted; (out, in) = GGUF ne reversed.
  at::Tensor raw_v = attnvar::gguf_tensor_to_f32(f, *f.find_tensor("blk.0.attn_v.weight"));
  CHECK(at::equal(w.tensors.at("model.layers.0.self_attn.v_proj.weight"), raw_v));
  CHECK(w.tensors.at("model.layers.0.mlp.down_proj.weight").sizes() ==
        at::IntArrayRef{kHidden, kFfn});

  auto bf = attnvar::load_weights(path, at::kBFloat16);
  CHECK(bf.tensors.at("model.norm.weight").scalar_type() == at::kBFloat16);
  CHECK(bf.identity.note.find("bf16") != std::string::npos);
}

TEST_CASE("gguf: load_weights rejects a missing tensor or a wrong shape, naming it", "[gguf]") {
  expect_error<MissingError>(
      [] { attnvar::load_weights(tiny_llama("blk.0.ffn_up.weight").write("missing.gguf")); },
      {"missing.gguf", "blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight"});
  GgufBuilder g = tiny_llama("blk.0.attn_v.weight");
  g.tensor_f32("blk.0.attn_v.weight", {kHidden, 2 * kKvHeads * kHeadDim},
               std::vector<float>(2 * kHidden * kKvHeads * kHeadDim, 0.f));
  expect_error<FormatError>([&] { attnvar::load_weights(g.write("shape.gguf")); },
                            {"shape.gguf", "blk.0.attn_v.weight", "(8, 8)", "(4, 8)"});
  GgufBuilder extra = tiny_llama();
  extra.tensor_f32("blk.0.surprise.weight", {4}, {1, 2, 3, 4});
  expect_error<FormatError>([&] { attnvar::load_weights(extra.write("extra.gguf")); },
                            {"extra.gguf", "blk.0.surprise.weight"});
}

// ---- hostile inputs: unbounded names, counts and bytes -------------------------------------

TEST_CASE("gguf: printable escapes ill-formed UTF-8 and control bytes, and caps the length",
          "[gguf][hostile]") {
  using attnvar::printable;
  CHECK(printable("blk.0.attn_q.weight") == "blk.0.attn_q.weight");
  CHECK(printable(std::string("a\nb\xff\xfe", 5)) == "a\\x0ab\\xff\\xfe");
  CHECK(printable(std::string("nul\0x", 5)) == "nul\\x00x");
  CHECK(printable("caf\xc3\xa9") == "caf\xc3\xa9");  // well-formed UTF-8 is kept
  CHECK(printable(std::string(1000, 'x'), 10) == "xxxxxxxxxx...(1000 bytes)");
  CHECK(printable("a\xc3\xa9", 2) == "a...(3 bytes)");  // never cut inside a character
  CHECK(attnvar::utf8_message("line 1\nline \xc0 2") == "line 1\nline \\xc0 2");
  CHECK(attnvar::utf8::is_valid(printable(std::string(300, '\xff'))));
}

TEST_CASE("gguf: a 100k-character tensor name or layer number is a FormatError, not a crash",
          "[gguf][hostile]") {
  {
    GgufBuilder g = tiny_llama();
    g.tensor_f32(std::string(100000, 'a'), {4}, {1, 2, 3, 4});
    expect_error<FormatError>([&] { GgufFile f(g.write("longname.gguf")); },
                              {"longname.gguf", "tensor info #11 name", "length 100000",
                               "at offset", "256-byte limit"});
  }
  {  // the stack-overflow reproducer: a layer number of 100k digits
    GgufBuilder g = tiny_llama();
    g.tensor_f32("blk." + std::string(100000, '7') + ".attn_q.weight", {4}, {1, 2, 3, 4});
    expect_error<FormatError>([&] { attnvar::load_weights(g.write("longlayer.gguf")); },
                              {"longlayer.gguf", "tensor info #11 name", "256-byte limit"});
  }
  {  // a metadata key over the spec's 65535 bytes
    GgufBuilder g;
    g.u32(std::string(70000, 'k'), 1);
    expect_error<FormatError>([&] { GgufFile f(g.write("longkey.gguf")); },
                              {"longkey.gguf", "metadata key #0", "65535-byte limit"});
  }
  {  // within the cap, a layer number too long for an integer: unexpected tensor, named
    GgufBuilder g = tiny_llama();
    g.tensor_f32("blk.123456789012345678901234567890.attn_q.weight", {4}, {1, 2, 3, 4});
    expect_error<FormatError>(
        [&] { attnvar::load_weights(g.write("biglayer.gguf")); },
        {"biglayer.gguf", "tensor #11", "blk.123456789012345678901234567890.attn_q.weight"});
  }
}

TEST_CASE("gguf: gguf_to_hf_name parses names by hand, rejecting non-canonical layers",
          "[gguf][hostile]") {
  using attnvar::gguf_to_hf_name;
  CHECK(gguf_to_hf_name("blk.12.attn_q.weight") == "model.layers.12.self_attn.q_proj.weight");
  CHECK(gguf_to_hf_name("blk.0.ffn_down.bias") == "model.layers.0.mlp.down_proj.bias");
  CHECK(gguf_to_hf_name("blk.999999999.ffn_up.weight") ==
        "model.layers.999999999.mlp.up_proj.weight");
  CHECK(gguf_to_hf_name("token_embd.weight") == "model.embed_tokens.weight");
  for (const std::string bad :
       {"blk.01.attn_q.weight", "blk.1234567890.attn_q.weight", "blk.-1.attn_q.weight",
        "blk..attn_q.weight", "blk.1.attn_q", "blk.1.attn_q.scale", "blk.1.attn_q.x.weight",
        "blk.1", "blk.", "blk.1.weight", "blk.1.nope.weight", "blk.1attn_q.weight"}) {
    INFO(bad);
    CHECK_FALSE(gguf_to_hf_name(bad).has_value());
  }
  // Unbounded input: linear time and constant stack (std::regex overflowed the stack here).
  CHECK_FALSE(gguf_to_hf_name(std::string(100000, 'a')).has_value());
  CHECK_FALSE(gguf_to_hf_name("blk." + std::string(100000, '9') + ".attn_q.weight").has_value());
}

TEST_CASE("gguf: a block_count over the cap or beyond the file's tensors fails before allocating",
          "[gguf][hostile]") {
  for (const uint32_t n : {10000000u, 4294967295u}) {
    GgufBuilder g = tiny_llama("llama.block_count");
    g.u32("llama.block_count", n);
    const std::string path = g.write("huge_blocks.gguf");
    expect_error<ConfigError>([&] { attnvar::load_weights(path); },
                              {"huge_blocks.gguf", "'llama.block_count'", std::to_string(n),
                               "maximum of 4096"});
  }
  {  // under the cap, but more layers than the file's 11 tensors can hold
    GgufBuilder g = tiny_llama("llama.block_count");
    g.u32("llama.block_count", 4000);
    expect_error<FormatError>([&] { attnvar::load_weights(g.write("many_blocks.gguf")); },
                              {"many_blocks.gguf", "'llama.block_count'", "4000 layers",
                               "the file has only 11 tensors"});
  }
}

TEST_CASE("gguf: ill-formed UTF-8 from the file is escaped in error messages",
          "[gguf][hostile]") {
  auto valid_message = [](const std::function<void()>& fn) {
    try {
      fn();
    } catch (const attnvar::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  GgufBuilder g = tiny_llama();
  g.tensor_f32("blk.0.\xff\xfe_bad.weight", {4}, {1, 2, 3, 4});
  const std::string path = g.write("badutf8_name.gguf");
  const std::string m1 = valid_message([&] { attnvar::load_weights(path); });
  INFO(m1);
  CHECK(m1.find("badutf8_name.gguf") != std::string::npos);
  CHECK(m1.find("blk.0.\\xff\\xfe_bad.weight") != std::string::npos);
  CHECK(attnvar::utf8::is_valid(m1));

  GgufBuilder arch = tiny_llama("general.architecture");
  arch.str("general.architecture", "ll\xc3\x28ma");
  const std::string m2 =
      valid_message([&] { attnvar::load_weights(arch.write("badutf8_arch.gguf")); });
  INFO(m2);
  CHECK(m2.find("'ll\\xc3(ma'") != std::string::npos);
  CHECK(attnvar::utf8::is_valid(m2));
}

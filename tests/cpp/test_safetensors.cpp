// The safetensors reader on files written by the test (single and sharded), the HF
// directory path of load_weights, and SHA-256. Malformed files raise FormatError or
// MissingError naming the file and the tensor or field; truncations never crash.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <random>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "attnvar/error.h"
#include "attnvar/model/safetensors.h"
#include "attnvar/model/sha256.h"
#include "attnvar/model/weights.h"
#include "catch_compat.h"

namespace fs = std::filesystem;
using attnvar::FormatError;
using attnvar::MissingError;
using attnvar::SafetensorsFile;
using attnvar::SafetensorsModel;

namespace {

std::string tmp_dir(const std::string& name) {
  const fs::path d = fs::path(ATTNVAR_TEST_TMPDIR) / name;
  fs::create_directories(d);
  return d.string();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// A safetensors file from a raw JSON header and data section.
std::vector<uint8_t> st_bytes(const std::string& header, const std::vector<uint8_t>& data) {
  const uint64_t n = header.size();
  std::vector<uint8_t> b(8 + header.size() + data.size());
  std::memcpy(b.data(), &n, 8);
  std::copy(header.begin(), header.end(), b.begin() + 8);
  std::copy(data.begin(), data.end(), b.begin() + 8 + static_cast<long>(header.size()));
  return b;
}

// Tensors of f32 values, laid out back to back: {name: (shape, values)}.
struct StBuilder {
  std::vector<std::tuple<std::string, std::vector<int64_t>, std::vector<float>>> tensors;
  std::vector<uint8_t> bytes() const {
    std::string header = R"({"__metadata__": {"format": "pt"})";
    std::vector<uint8_t> data;
    for (const auto& [name, shape, values] : tensors) {
      std::string dims;
      for (auto d : shape) dims += fmt::format("{}{}", dims.empty() ? "" : ",", d);
      const size_t begin = data.size();
      data.resize(begin + 4 * values.size());
      std::memcpy(data.data() + begin, values.data(), 4 * values.size());
      header +=
          fmt::format(R"(, "{}": {{"dtype": "F32", "shape": [{}], "data_offsets": [{}, {}]}})",
                      name, dims, begin, data.size());
    }
    return st_bytes(header + "}", data);
  }
};

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

std::vector<uint8_t> three_dtypes() {
  // a: F32 (2,), b: F16 (2, 1) = [1, -2], c: BF16 (1,) = 3
  std::vector<uint8_t> data(8 + 4 + 2);
  const float a[2] = {1.5f, -0.25f};
  std::memcpy(data.data(), a, 8);
  const uint16_t b[2] = {0x3C00, 0xC000};
  std::memcpy(data.data() + 8, b, 4);
  const uint16_t c = 0x4040;
  std::memcpy(data.data() + 12, &c, 2);
  return st_bytes(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "b": {"dtype": "F16", "shape": [2, 1], "data_offsets": [8, 12]},
    "c": {"dtype": "BF16", "shape": [1], "data_offsets": [12, 14]},
    "__metadata__": {"format": "pt", "n": 3}})",
                  data);
}

}  // namespace

TEST_CASE("safetensors: F32, F16 and BF16 tensors and metadata read back", "[safetensors]") {
  const std::string path = tmp_dir("st") + "/three.safetensors";
  write_bytes(path, three_dtypes());
  SafetensorsFile f(path);
  REQUIRE(f.tensors().size() == 3);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("n") == "3");
  const auto* b = f.find("b");
  REQUIRE(b != nullptr);
  CHECK(b->dtype == "F16");
  CHECK(b->shape == std::vector<int64_t>{2, 1});
  CHECK(b->nbytes == 4);
  CHECK(b->file == path);
  CHECK(f.find("nope") == nullptr);
  at::Tensor tb = attnvar::safetensors_to_tensor(*b);
  CHECK(tb.scalar_type() == at::kHalf);
  CHECK(at::equal(tb.to(at::kFloat), at::tensor({1.0f, -2.0f}).reshape({2, 1})));
  at::Tensor tc = attnvar::safetensors_to_tensor(*f.find("c"));
  CHECK(tc.scalar_type() == at::kBFloat16);
  CHECK(tc.to(at::kFloat).item<float>() == 3.0f);
  CHECK(at::equal(attnvar::safetensors_to_tensor(*f.find("a")), at::tensor({1.5f, -0.25f})));
}

TEST_CASE("safetensors: malformed headers name the file and the tensor", "[safetensors]") {
  const std::string dir = tmp_dir("st_bad");
  auto check = [&](const std::string& name, const std::vector<uint8_t>& bytes,
                   const std::vector<std::string>& needles) {
    const std::string path = dir + "/" + name;
    write_bytes(path, bytes);
    std::vector<std::string> all = needles;
    all.push_back(name);
    expect_error<FormatError>([&] { SafetensorsFile f(path); }, all);
  };
  const std::vector<uint8_t> four(16, 0);
  check("short.safetensors", {1, 2, 3}, {"header length"});
  {
    auto b = st_bytes("{}", {});
    const uint64_t huge = 1ull << 40;
    std::memcpy(b.data(), &huge, 8);
    check("hlen.safetensors", b, {"header length", "past the end"});
  }
  check("json.safetensors", st_bytes("{not json", four), {"invalid JSON"});
  check("array.safetensors", st_bytes("[1, 2]", four), {"JSON object"});
  check("dtype.safetensors",
        st_bytes(R"({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}})", four),
        {"'w'", "unknown dtype 'Q4'"});
  check("shape.safetensors",
        st_bytes(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", four),
        {"'w'", "needs 12 bytes", "span 16"});
  check("negshape.safetensors",
        st_bytes(R"({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})", four),
        {"'w'", "negative"});
  check("offsets.safetensors",
        st_bytes(R"({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}})", four),
        {"'w'", "outside the data section"});
  check("reversed.safetensors",
        st_bytes(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})", four),
        {"'w'", "data_offsets"});
  check("nooffsets.safetensors", st_bytes(R"({"w": {"dtype": "F32", "shape": [4]}})", four),
        {"'w'", "data_offsets"});
  check("overlap.safetensors",
        st_bytes(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
                 four),
        {"'b'", "overlaps tensor 'a'"});
  expect_error<MissingError>([&] { SafetensorsFile f(dir + "/absent.safetensors"); },
                             {"absent.safetensors"});
}

TEST_CASE("safetensors: every truncation of a valid file is a FormatError", "[safetensors]") {
  const auto full = three_dtypes();
  const std::string path = tmp_dir("st_cut") + "/cut.safetensors";
  for (size_t n = 1; n < full.size(); ++n) {
    write_bytes(path, std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(n)));
    expect_error<FormatError>([&] { SafetensorsFile f(path); }, {"cut.safetensors"});
  }
}

TEST_CASE("safetensors: sharded index resolves each tensor in its shard", "[safetensors]") {
  const std::string dir = tmp_dir("st_shards");
  StBuilder s1, s2;
  s1.tensors = {{"x", {2}, {1, 2}}, {"y", {1}, {3}}};
  s2.tensors = {{"z", {2, 2}, {4, 5, 6, 7}}};
  write_bytes(dir + "/model-00001-of-00002.safetensors", s1.bytes());
  write_bytes(dir + "/model-00002-of-00002.safetensors", s2.bytes());
  write_text(dir + "/model.safetensors.index.json", R"({"metadata": {"total_size": 28},
    "weight_map": {"x": "model-00001-of-00002.safetensors",
                   "y": "model-00001-of-00002.safetensors",
                   "z": "model-00002-of-00002.safetensors"}})");
  SafetensorsModel m(dir);
  CHECK(m.files().size() == 2);
  CHECK(m.tensors().size() == 3);
  CHECK(m.at("z").shape == std::vector<int64_t>{2, 2});
  CHECK(m.at("z").file.find("00002") != std::string::npos);
  expect_error<MissingError>([&] { m.at("w"); }, {"'w'", "00001", "00002"});

  write_text(dir + "/wrong.index.json",
             R"({"weight_map": {"z": "model-00001-of-00002.safetensors"}})");
  expect_error<MissingError>([&] { SafetensorsModel x(dir + "/wrong.index.json"); },
                             {"wrong.index.json", "'z'", "00001"});
  write_text(dir + "/escape.index.json", R"({"weight_map": {"z": "../model.safetensors"}})");
  expect_error<FormatError>([&] { SafetensorsModel x(dir + "/escape.index.json"); },
                            {"escape.index.json", "weight_map['z']", "plain file name"});
  write_text(dir + "/gone.index.json", R"({"weight_map": {"z": "model-00003.safetensors"}})");
  expect_error<MissingError>([&] { SafetensorsModel x(dir + "/gone.index.json"); },
                             {"model-00003.safetensors"});
  // The same tensor in two shards is ambiguous.
  StBuilder s3;
  s3.tensors = {{"x", {1}, {9}}, {"z", {2, 2}, {4, 5, 6, 7}}};
  write_bytes(dir + "/dup.safetensors", s3.bytes());
  write_text(dir + "/dup.index.json", R"({"weight_map": {"z": "model-00002-of-00002.safetensors",
    "x": "dup.safetensors"}})");
  expect_error<FormatError>([&] { SafetensorsModel x(dir + "/dup.index.json"); }, {"'z'", "both"});
  write_text(dir + "/empty.index.json", R"({"weight_map": {}})");
  expect_error<FormatError>([&] { SafetensorsModel x(dir + "/empty.index.json"); },
                            {"empty.index.json", "weight_map"});
}

// ---- load_weights on an HF directory -------------------------------------------------------

namespace {

const char* kTinyConfig = R"({"model_type": "qwen2", "vocab_size": 6, "hidden_size": 4,
  "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
  "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "tie_word_embeddings": false})";

// qwen2, one layer: hidden 4, 2 heads of 2, 1 kv head, ffn 8, vocab 6.
std::map<std::string, std::vector<int64_t>> tiny_qwen2_shapes() {
  return {{"model.embed_tokens.weight", {6, 4}},
          {"model.layers.0.input_layernorm.weight", {4}},
          {"model.layers.0.self_attn.q_proj.weight", {4, 4}},
          {"model.layers.0.self_attn.q_proj.bias", {4}},
          {"model.layers.0.self_attn.k_proj.weight", {2, 4}},
          {"model.layers.0.self_attn.k_proj.bias", {2}},
          {"model.layers.0.self_attn.v_proj.weight", {2, 4}},
          {"model.layers.0.self_attn.v_proj.bias", {2}},
          {"model.layers.0.self_attn.o_proj.weight", {4, 4}},
          {"model.layers.0.post_attention_layernorm.weight", {4}},
          {"model.layers.0.mlp.gate_proj.weight", {8, 4}},
          {"model.layers.0.mlp.up_proj.weight", {8, 4}},
          {"model.layers.0.mlp.down_proj.weight", {4, 8}},
          {"model.norm.weight", {4}},
          {"lm_head.weight", {6, 4}}};
}

std::string write_tiny_qwen2(const std::string& name, const std::string& skip = "",
                             const std::string& reshape = "") {
  const std::string dir = tmp_dir(name);
  write_text(dir + "/config.json", kTinyConfig);
  StBuilder b;
  float next = 0.f;
  for (auto [tensor, shape] : tiny_qwen2_shapes()) {
    if (tensor == skip) continue;
    if (tensor == reshape) shape[0] += 1;
    int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = (next += 0.125f);
    b.tensors.emplace_back(tensor, shape, v);
  }
  write_bytes(dir + "/model.safetensors", b.bytes());
  return dir;
}

}  // namespace

TEST_CASE("safetensors: load_weights reads an HF directory with every tensor checked",
          "[safetensors]") {
  const std::string dir = write_tiny_qwen2("hf_ok");
  auto w = attnvar::load_weights(dir);
  CHECK(w.config.model_type == "qwen2");
  CHECK(w.tensors.size() == tiny_qwen2_shapes().size());
  CHECK(w.identity.format == "safetensors");
  CHECK(w.identity.quantization == "F32");
  CHECK(w.identity.note.empty());
  CHECK(w.identity.sha256 == attnvar::sha256_file(dir + "/model.safetensors"));
  SafetensorsFile f(dir + "/model.safetensors");
  for (const auto& [name, t] : w.tensors) {
    INFO(name);
    CHECK(at::equal(t, attnvar::safetensors_to_tensor(*f.find(name))));
  }
  // The single file inside the directory works too.
  auto w2 = attnvar::load_weights(dir + "/model.safetensors", at::kBFloat16);
  CHECK(w2.tensors.at("lm_head.weight").scalar_type() == at::kBFloat16);
  CHECK(w2.identity.note == "converted from F32 to bf16");
}

TEST_CASE("safetensors: load_weights names a missing or misshapen tensor", "[safetensors]") {
  expect_error<MissingError>(
      [] {
        attnvar::load_weights(
            write_tiny_qwen2("hf_missing", "model.layers.0.self_attn.k_proj.bias"));
      },
      {"hf_missing", "model.layers.0.self_attn.k_proj.bias"});
  expect_error<FormatError>(
      [] {
        attnvar::load_weights(
            write_tiny_qwen2("hf_shape", "", "model.layers.0.mlp.up_proj.weight"));
      },
      {"hf_shape/model.safetensors", "model.layers.0.mlp.up_proj.weight", "(9, 4)", "(8, 4)"});
  expect_error<MissingError>([] { attnvar::load_weights(tmp_dir("hf_empty")); }, {"hf_empty"});
}

TEST_CASE("sha256: FIPS 180-4 test vectors, SHA instructions and portable", "[safetensors][sha256]") {
  for (const auto kernel : {attnvar::Sha256Kernel::kAuto, attnvar::Sha256Kernel::kPortable}) {
    INFO((kernel == attnvar::Sha256Kernel::kAuto ? "auto" : "portable"));
    auto hash = [kernel](const std::string& s) {
      attnvar::Sha256 h(kernel);
      h.update(s.data(), s.size());
      return h.hex_digest();
    };
    CHECK(hash("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(hash("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    // Fed in uneven pieces: a million 'a'.
    attnvar::Sha256 h(kernel);
    const std::string chunk(997, 'a');
    size_t fed = 0;
    while (fed + chunk.size() <= 1000000) h.update(chunk.data(), chunk.size()), fed += chunk.size();
    h.update(chunk.data(), 1000000 - fed);
    CHECK(h.hex_digest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }
}

TEST_CASE("sha256: the SHA instructions' digest is the portable one, any length and split",
          "[safetensors][sha256]") {
  std::mt19937 rng(29);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string data(70000, '\0');
  for (char& c : data) c = static_cast<char>(byte(rng));
  std::uniform_int_distribution<size_t> cut(0, 200);
  for (size_t n : {size_t{0}, size_t{1}, size_t{55}, size_t{56}, size_t{63}, size_t{64},
                   size_t{65}, size_t{119}, size_t{127}, size_t{128}, size_t{129}, size_t{4096},
                   size_t{70000}}) {
    attnvar::Sha256 whole(attnvar::Sha256Kernel::kPortable), pieces;
    whole.update(data.data(), n);
    for (size_t fed = 0; fed < n;) {  // uneven pieces, blocks split across them
      const size_t take = std::min(n - fed, cut(rng));
      pieces.update(data.data() + fed, take);
      fed += take;
    }
    INFO("length " << n);
    CHECK(pieces.hex_digest() == whole.hex_digest());
  }
}

#include "attnvar/model/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "attnvar/error.h"
#include "attnvar/model/mapped_file.h"

namespace attnvar {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The reference implementation's limit: larger headers are corrupt, not worth parsing.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

[[noreturn]] void fail(const std::string& path, const std::string& field, const std::string& why) {
  throw FormatError(fmt::format("{}: {}: {}", path, field, why));
}

}  // namespace

int64_t safetensors_dtype_size(const std::string& dtype) {
  static const std::map<std::string, int64_t> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"U16", 2},  {"I16", 2}, {"F16", 2}, {"BF16", 2},    {"U32", 4},
      {"I32", 4},  {"F32", 4}, {"U64", 8}, {"I64", 8},     {"F64", 8}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

SafetensorsFile::SafetensorsFile(const std::string& path)
    : path_(path), file_(std::make_unique<MappedFile>(path)) {
  const uint64_t size = file_->size();
  if (size < 8) {
    fail(path, "header length",
         fmt::format("file is {} bytes, shorter than the 8-byte length", size));
  }
  uint64_t header_len;
  std::memcpy(&header_len, file_->data(), 8);
  if (header_len > size - 8) {
    fail(path, "header length",
         fmt::format("{} bytes runs past the end of the file (size {}; truncated?)", header_len,
                     size));
  }
  if (header_len > kMaxHeaderBytes) {
    fail(path, "header length",
         fmt::format("{} bytes exceeds the {} byte limit", header_len, kMaxHeaderBytes));
  }
  const auto* text = reinterpret_cast<const char*>(file_->data() + 8);
  json header;
  try {
    header = json::parse(text, text + header_len);
  } catch (const json::exception& e) {
    fail(path, "header", "invalid JSON: " + printable(e.what()));
  }
  if (!header.is_object()) fail(path, "header", "expected a JSON object");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object() && !entry.is_null()) fail(path, "__metadata__", "expected an object");
      if (entry.is_object()) {
        for (const auto& [k, v] : entry.items()) {
          metadata_[k] = v.is_string() ? v.get<std::string>() : v.dump();
        }
      }
      continue;
    }
    const std::string field = fmt::format("tensor '{}'", name);
    if (!entry.is_object()) fail(path, field, "expected an object");
    SafetensorsTensor t;
    t.name = name;
    t.file = path;
    auto dt = entry.find("dtype");
    if (dt == entry.end() || !dt->is_string()) fail(path, field, "missing string 'dtype'");
    t.dtype = dt->get<std::string>();
    t.element_size = safetensors_dtype_size(t.dtype);
    if (t.element_size == 0) fail(path, field, fmt::format("unknown dtype '{}'", t.dtype));

    auto sh = entry.find("shape");
    if (sh == entry.end() || !sh->is_array()) fail(path, field, "missing array 'shape'");
    // Element count with overflow checks: extents and the product stay below 2^62.
    uint64_t n_elements = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0)) {
        fail(path, field, fmt::format("shape {} has a non-integer or negative extent", sh->dump()));
      }
      const uint64_t ne = d.get<uint64_t>();
      if (ne > (1ull << 62) || (ne != 0 && n_elements > (1ull << 62) / ne)) {
        fail(path, field, fmt::format("shape {} is too large", sh->dump()));
      }
      n_elements *= ne;
      t.shape.push_back(static_cast<int64_t>(ne));
    }

    auto off = entry.find("data_offsets");
    if (off == entry.end() || !off->is_array() || off->size() != 2 ||
        !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
      fail(path, field, "'data_offsets' must be [begin, end] of non-negative integers");
    }
    const uint64_t begin = (*off)[0].get<uint64_t>();
    const uint64_t end = (*off)[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      fail(path, field,
           fmt::format("data_offsets [{}, {}] outside the data section of {} bytes (truncated?)",
                       begin, end, data_size));
    }
    // n_elements < 2^62 and element_size <= 8: compare without overflow.
    if (n_elements > (end - begin) / static_cast<uint64_t>(t.element_size) ||
        n_elements * static_cast<uint64_t>(t.element_size) != end - begin) {
      fail(path, field,
           fmt::format("shape {} of {} needs {} bytes but data_offsets span {}", sh->dump(),
                       t.dtype, static_cast<double>(n_elements) * t.element_size, end - begin));
    }
    t.data = file_->data() + data_start + begin;
    t.nbytes = end - begin;
    tensors_.push_back(std::move(t));
  }

  std::sort(tensors_.begin(), tensors_.end(), [](const auto& a, const auto& b) {
    return a.data < b.data || (a.data == b.data && a.nbytes < b.nbytes);
  });
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (i > 0) {
      const auto& prev = tensors_[i - 1];
      const auto* prev_end = static_cast<const uint8_t*>(prev.data) + prev.nbytes;
      if (static_cast<const uint8_t*>(tensors_[i].data) < prev_end) {
        fail(path, fmt::format("tensor '{}'", tensors_[i].name),
             fmt::format("data overlaps tensor '{}'", prev.name));
      }
    }
    index_.emplace(tensors_[i].name, i);
  }
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

const SafetensorsTensor* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

SafetensorsModel::SafetensorsModel(const std::string& path) : origin_(path) {
  fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) throw MissingError(path + ": no such file or directory");
  fs::path index_path;
  fs::path single_path;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "model.safetensors.index.json", ec)) {
      index_path = p / "model.safetensors.index.json";
    } else if (fs::exists(p / "model.safetensors", ec)) {
      single_path = p / "model.safetensors";
    } else {
      throw MissingError(path +
                         ": no model.safetensors or model.safetensors.index.json in the directory");
    }
  } else if (p.extension() == ".json") {
    index_path = p;
  } else {
    single_path = p;
  }

  if (!single_path.empty()) {
    shards_.emplace_back(single_path.string());
    for (const auto& t : shards_.back().tensors()) by_name_.emplace(t.name, &t);
    return;
  }

  const std::string ip = index_path.string();
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw FormatError(ip + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  json index;
  try {
    index = json::parse(ss.str());
  } catch (const json::exception& e) {
    fail(ip, "index", "invalid JSON: " + printable(e.what()));
  }
  if (!index.is_object()) fail(ip, "index", "expected a JSON object");
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object() || wm->empty()) {
    fail(ip, "weight_map", "missing or empty");
  }
  // Shard names must be plain file names next to the index: never a path out of it.
  std::map<std::string, size_t> shard_of_file;
  std::vector<std::pair<std::string, std::string>> wanted;  // (tensor, shard file name)
  for (const auto& [name, file] : wm->items()) {
    const std::string field = fmt::format("weight_map['{}']", name);
    if (!file.is_string()) fail(ip, field, "expected a file name");
    const std::string f = file.get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos ||
        f == "." || f == "..") {
      fail(ip, field, fmt::format("'{}' is not a plain file name in the index's directory", f));
    }
    shard_of_file.emplace(f, 0);
    wanted.emplace_back(name, f);
  }
  // Open each shard once, in sorted order (std::map), so files() is deterministic.
  shards_.reserve(shard_of_file.size());
  for (auto& [f, idx] : shard_of_file) {
    idx = shards_.size();
    shards_.emplace_back((index_path.parent_path() / f).string());
  }
  for (const auto& [name, f] : wanted) {
    const SafetensorsFile& shard = shards_[shard_of_file.at(f)];
    const SafetensorsTensor* t = shard.find(name);
    if (!t) {
      throw MissingError(
          fmt::format("{}: tensor '{}' listed in weight_map is not in {}", ip, name, shard.path()));
    }
    by_name_.emplace(name, t);
  }
  // A tensor present in two shards is ambiguous, whatever the map says.
  std::map<std::string, std::string> seen;
  for (const auto& shard : shards_) {
    for (const auto& t : shard.tensors()) {
      auto [it, fresh] = seen.emplace(t.name, shard.path());
      if (!fresh) {
        fail(ip, fmt::format("tensor '{}'", t.name),
             fmt::format("present in both {} and {}", it->second, shard.path()));
      }
    }
  }
}

std::vector<std::string> SafetensorsModel::files() const {
  std::vector<std::string> out;
  for (const auto& s : shards_) out.push_back(s.path());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<const SafetensorsTensor*> SafetensorsModel::tensors() const {
  std::vector<const SafetensorsTensor*> out;
  for (const auto& [name, t] : by_name_) out.push_back(t);
  return out;
}

const SafetensorsTensor* SafetensorsModel::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const SafetensorsTensor& SafetensorsModel::at(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  if (!t) {
    std::string where;
    for (const auto& f : files()) where += (where.empty() ? "" : ", ") + f;
    throw MissingError(
        fmt::format("{}: tensor '{}' not found (searched {})", origin_, name, where));
  }
  return *t;
}

}  // namespace attnvar

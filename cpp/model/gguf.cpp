#include "attnvar/model/gguf.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>

#include "attnvar/error.h"
#include "attnvar/model/dequantize.h"
#include "attnvar/model/mapped_file.h"

namespace attnvar {
namespace {

constexpr uint64_t kFixedHeader = 4 + 4 + 8 + 8;  // magic, version, n_tensors, n_kv
constexpr uint32_t kMaxDims = 4;                  // GGML_MAX_DIMS
constexpr uint64_t kMaxAlignment = 1 << 20;
constexpr int kMaxArrayDepth = 8;  // nested arrays: no known key uses them; bound recursion

const char* value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

bool is_int_type(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      return true;
    default:
      return false;
  }
}

bool is_float_type(GgufValueType t) {
  return t == GgufValueType::kFloat32 || t == GgufValueType::kFloat64;
}

// Bytes a scalar of type t occupies; strings are at least their 8-byte length, arrays at
// least their 12-byte element type and count.
uint64_t min_value_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
    case GgufValueType::kString:
      return 8;
    case GgufValueType::kArray:
      return 12;
  }
  return 1;
}

// Bounds-checked little-endian reads from the mapping. Every read names the field it is
// for, so a truncated file reports what was being read and where.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* data, uint64_t size)
      : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw FormatError(fmt::format("{}: {}: {}", path_, field, why));
  }

  void need(uint64_t n, const std::string& field) const {
    if (n > remaining()) {
      fail(field, fmt::format("needs {} bytes at offset {} but the file ends at {} (truncated?)", n,
                              pos_, size_));
    }
  }

  template <typename T>
  T read(const std::string& field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  void skip(uint64_t n, const std::string& field) {
    need(n, field);
    pos_ += n;
  }

  // A string; `max_len` bounds names (keys, tensor names) before anything is copied.
  std::string read_string(const std::string& field,
                          uint64_t max_len = std::numeric_limits<uint64_t>::max()) {
    const uint64_t len = read<uint64_t>(field + " (string length)");
    if (len > max_len && len <= remaining()) {
      const std::string_view head(reinterpret_cast<const char*>(data_ + pos_), 32);
      fail(field, fmt::format("length {} at offset {} exceeds the {}-byte limit (starts '{}')",
                              len, pos_ - 8, max_len, printable(head)));
    }
    if (len > remaining()) {
      fail(field, fmt::format("string length {} at offset {} runs past the end of the file "
                              "(size {})",
                              len, pos_ - 8, size_));
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  const std::string& path_;
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

int64_t read_int(Cursor& c, GgufValueType t, const std::string& field) {
  switch (t) {
    case GgufValueType::kUint8:
      return c.read<uint8_t>(field);
    case GgufValueType::kInt8:
      return c.read<int8_t>(field);
    case GgufValueType::kUint16:
      return c.read<uint16_t>(field);
    case GgufValueType::kInt16:
      return c.read<int16_t>(field);
    case GgufValueType::kUint32:
      return c.read<uint32_t>(field);
    case GgufValueType::kInt32:
      return c.read<int32_t>(field);
    case GgufValueType::kInt64:
      return c.read<int64_t>(field);
    case GgufValueType::kUint64: {
      const uint64_t v = c.read<uint64_t>(field);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        c.fail(field, fmt::format("uint64 value {} does not fit in int64", v));
      }
      return static_cast<int64_t>(v);
    }
    default:
      c.fail(field, "internal: not an integer type");
  }
}

// f32 values become the double nearest their shortest round-trip decimal form, so a value
// written from config.json's 1e-05 reads back as 1e-05 rather than 9.99999974737875e-06
// (the same f32 either way).
double widen_f32(float f) {
  if (!std::isfinite(f)) return static_cast<double>(f);
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), f);
  double d = static_cast<double>(f);
  if (ec == std::errc()) std::from_chars(buf, end, d);
  return d;
}

double read_float(Cursor& c, GgufValueType t, const std::string& field) {
  if (t == GgufValueType::kFloat32) return widen_f32(c.read<float>(field));
  return c.read<double>(field);
}

GgufValueType read_value_type(Cursor& c, const std::string& field) {
  const uint32_t raw = c.read<uint32_t>(field + " (value type)");
  if (raw > static_cast<uint32_t>(GgufValueType::kFloat64)) {
    c.fail(field, fmt::format("unknown value type {}", raw));
  }
  return static_cast<GgufValueType>(raw);
}

// Reads (and discards) an array's elements; used for nested arrays.
void skip_array(Cursor& c, const std::string& field, int depth);

void skip_value(Cursor& c, GgufValueType t, const std::string& field, int depth) {
  if (t == GgufValueType::kString) {
    c.read_string(field);
  } else if (t == GgufValueType::kArray) {
    skip_array(c, field, depth + 1);
  } else {
    c.skip(min_value_size(t), field);  // scalars have fixed sizes
  }
}

void skip_array(Cursor& c, const std::string& field, int depth) {
  if (depth > kMaxArrayDepth) c.fail(field, "arrays nested too deeply");
  const GgufValueType et = read_value_type(c, field + " (array element)");
  const uint64_t n = c.read<uint64_t>(field + " (array length)");
  if (n > c.remaining() / min_value_size(et)) {
    c.fail(field, fmt::format("array length {} runs past the end of the file", n));
  }
  for (uint64_t i = 0; i < n; ++i) skip_value(c, et, field, depth);
}

GgufValue read_value(Cursor& c, GgufValueType t, const std::string& field) {
  GgufValue v;
  v.type = t;
  if (is_int_type(t)) {
    v.value = read_int(c, t, field);
  } else if (is_float_type(t)) {
    v.value = read_float(c, t, field);
  } else if (t == GgufValueType::kBool) {
    const uint8_t b = c.read<uint8_t>(field);
    if (b > 1) c.fail(field, fmt::format("bool value {} is neither 0 nor 1", b));
    v.value = b != 0;
  } else if (t == GgufValueType::kString) {
    v.value = c.read_string(field);
  } else {  // array
    const GgufValueType et = read_value_type(c, field + " (array element)");
    v.element_type = et;
    const uint64_t n = c.read<uint64_t>(field + " (array length)");
    // Bound the count by what the rest of the file could hold before allocating.
    if (n > c.remaining() / min_value_size(et)) {
      c.fail(field, fmt::format("array length {} ({} elements) runs past the end of the file", n,
                                value_type_name(et)));
    }
    if (is_int_type(et) || et == GgufValueType::kBool) {
      std::vector<int64_t> out(static_cast<size_t>(n));
      for (auto& x : out) {
        x = et == GgufValueType::kBool ? c.read<uint8_t>(field) : read_int(c, et, field);
      }
      v.value = std::move(out);
    } else if (is_float_type(et)) {
      std::vector<double> out(static_cast<size_t>(n));
      for (auto& x : out) x = read_float(c, et, field);
      v.value = std::move(out);
    } else if (et == GgufValueType::kString) {
      std::vector<std::string> out(static_cast<size_t>(n));
      for (auto& x : out) x = c.read_string(field);
      v.value = std::move(out);
    } else {  // arrays of arrays: validated and skipped
      for (uint64_t i = 0; i < n; ++i) skip_array(c, field, 1);
      v.value = std::vector<int64_t>{};
    }
  }
  return v;
}

}  // namespace

GgufFile::GgufFile(const std::string& path)
    : path_(path), file_(std::make_unique<MappedFile>(path)) {
  parse();
}

GgufFile::~GgufFile() = default;
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;

void GgufFile::parse() {
  Cursor c(path_, file_->data(), file_->size());
  if (file_->size() < kFixedHeader) {
    c.fail("header", fmt::format("file is {} bytes, shorter than the {}-byte GGUF header",
                                 file_->size(), kFixedHeader));
  }
  const auto magic = c.read<uint32_t>("magic");
  if (std::memcmp(file_->data(), "GGUF", 4) != 0) {
    c.fail("magic", fmt::format("not a GGUF file (first bytes 0x{:08x}, expected 'GGUF')", magic));
  }
  version_ = c.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    // A byte-swapped 2 or 3 is a big-endian file.
    if (version_ == 0x02000000u || version_ == 0x03000000u) {
      c.fail("version", "big-endian GGUF files are not supported");
    }
    c.fail("version", fmt::format("unsupported GGUF version {} (supported: 2, 3)", version_));
  }
  const auto n_tensors = c.read<uint64_t>("tensor_count");
  const auto n_kv = c.read<uint64_t>("metadata_kv_count");
  // A key/value pair takes at least 8 + 4 + 1 bytes and a tensor info 8 + 4 + 8 + 4 + 8:
  // counts beyond what the file could hold are corrupt, not allocations to attempt.
  if (n_kv > c.remaining() / 13) {
    c.fail("metadata_kv_count",
           fmt::format("{} key/value pairs cannot fit in {} bytes", n_kv, file_->size()));
  }
  if (n_tensors > c.remaining() / 32) {
    c.fail("tensor_count",
           fmt::format("{} tensors cannot fit in {} bytes", n_tensors, file_->size()));
  }

  for (uint64_t i = 0; i < n_kv; ++i) {
    const std::string index = fmt::format("metadata key #{}", i);
    std::string key = c.read_string(index, kMaxGgufKey);
    const std::string field = fmt::format("metadata key '{}'", printable(key));
    const GgufValueType t = read_value_type(c, field);
    GgufValue v = read_value(c, t, field);
    if (kv_.count(key)) c.fail(field, "appears twice");
    key_order_.push_back(key);
    kv_.emplace(std::move(key), std::move(v));
  }

  if (auto it = kv_.find("general.alignment"); it != kv_.end()) {
    const GgufValue& a = it->second;
    if (!is_int_type(a.type)) {
      c.fail("metadata key 'general.alignment'",
             fmt::format("expected an integer, found {}", value_type_name(a.type)));
    }
    const int64_t al = std::get<int64_t>(a.value);
    if (al <= 0 || static_cast<uint64_t>(al) > kMaxAlignment || (al & (al - 1)) != 0) {
      c.fail("metadata key 'general.alignment'",
             fmt::format("alignment {} is not a power of two in [1, {}]", al, kMaxAlignment));
    }
    alignment_ = static_cast<uint64_t>(al);
  }

  // Offsets are relative to the data section until it is located below.
  std::vector<uint64_t> relative(static_cast<size_t>(n_tensors));
  tensors_.reserve(static_cast<size_t>(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.read_string(fmt::format("tensor info #{} name", i), kMaxGgufTensorName);
    const std::string field = fmt::format("tensor '{}'", printable(t.name));
    const auto n_dims = c.read<uint32_t>(field + " n_dims");
    if (n_dims == 0 || n_dims > kMaxDims) {
      c.fail(field, fmt::format("n_dims {} is outside [1, {}]", n_dims, kMaxDims));
    }
    c.need(8ull * n_dims, field + " shape");
    uint64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto ne = c.read<uint64_t>(field + " shape");
      // Bounding each extent and the running product by 2^62 keeps the product exact.
      if (ne > (1ull << 62) || (ne != 0 && n_elements > (1ull << 62) / ne)) {
        c.fail(field, fmt::format("shape dimension {} = {} is too large", d, ne));
      }
      n_elements *= ne;
      t.shape.push_back(static_cast<int64_t>(ne));
    }
    t.type = c.read<uint32_t>(field + " type");
    const GgmlTypeTraits* traits = ggml_type_traits(t.type);
    if (!traits) c.fail(field, fmt::format("unknown tensor type {}", t.type));
    if (t.shape[0] % traits->block_size != 0) {
      c.fail(field, fmt::format("row length ne[0] = {} is not a multiple of the {} block size {}",
                                t.shape[0], traits->name, traits->block_size));
    }
    // Exact: n_elements < 2^62 and type_size / block_size <= 8.
    t.nbytes = n_elements / static_cast<uint64_t>(traits->block_size) *
               static_cast<uint64_t>(traits->type_size);
    relative[i] = c.read<uint64_t>(field + " offset");
    if (relative[i] % alignment_ != 0) {
      c.fail(field, fmt::format("data offset {} is not a multiple of the alignment {}", relative[i],
                                alignment_));
    }
    if (tensor_index_.count(t.name)) c.fail(field, "appears twice");
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  const uint64_t data_start = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  const uint64_t size = file_->size();
  if (!tensors_.empty() && data_start > size) {
    c.fail("data section", fmt::format("starts at offset {} beyond the end of the file (size {})",
                                       data_start, size));
  }
  const uint64_t data_size = tensors_.empty() ? 0 : size - data_start;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    GgufTensorInfo& t = tensors_[i];
    if (relative[i] > data_size || t.nbytes > data_size - relative[i]) {
      c.fail(fmt::format("tensor '{}'", printable(t.name)),
             fmt::format("data [{}, +{}) runs past the end of the data section ({} bytes at "
                         "offset {}; file truncated?)",
                         relative[i], t.nbytes, data_size, data_start));
    }
    t.offset = data_start + relative[i];
  }
  // Tensor data must not overlap: sorted by offset, each starts after the previous ends.
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GgufTensorInfo* prev = by_offset[i - 1];
    if (by_offset[i]->offset < prev->offset + prev->nbytes) {
      c.fail(fmt::format("tensor '{}'", printable(by_offset[i]->name)),
             fmt::format("data overlaps tensor '{}'", printable(prev->name)));
    }
  }
}

const std::string& GgufFile::path() const { return path_; }
uint32_t GgufFile::version() const { return version_; }
uint64_t GgufFile::alignment() const { return alignment_; }
uint64_t GgufFile::file_size() const { return file_->size(); }
bool GgufFile::has(const std::string& key) const { return kv_.count(key) != 0; }
std::vector<std::string> GgufFile::keys() const { return key_order_; }
const std::vector<GgufTensorInfo>& GgufFile::tensors() const { return tensors_; }

const GgufValue* GgufFile::value(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

namespace {

[[noreturn]] void wrong_type(const std::string& path, const std::string& key, const char* want,
                             const GgufValue& v) {
  std::string found = value_type_name(v.type);
  if (v.type == GgufValueType::kArray) {
    found = fmt::format("array of {}", value_type_name(v.element_type));
  }
  throw FormatError(
      fmt::format("{}: metadata key '{}': expected {}, found {}", path, printable(key), want,
                  found));
}

}  // namespace

std::optional<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = value(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::kString) wrong_type(path_, key, "a string", *v);
  return std::get<std::string>(v->value);
}

std::optional<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = value(key);
  if (!v) return std::nullopt;
  if (!is_int_type(v->type)) wrong_type(path_, key, "an integer", *v);
  return std::get<int64_t>(v->value);
}

std::optional<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = value(key);
  if (!v) return std::nullopt;
  if (is_float_type(v->type)) return std::get<double>(v->value);
  if (is_int_type(v->type)) return static_cast<double>(std::get<int64_t>(v->value));
  wrong_type(path_, key, "a number", *v);
}

std::optional<bool> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = value(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::kBool) wrong_type(path_, key, "a bool", *v);
  return std::get<bool>(v->value);
}

std::optional<std::vector<std::string>> GgufFile::get_string_array(const std::string& key) const {
  const GgufValue* v = value(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::kArray || v->element_type != GgufValueType::kString) {
    wrong_type(path_, key, "an array of strings", *v);
  }
  return std::get<std::vector<std::string>>(v->value);
}

std::optional<std::vector<int64_t>> GgufFile::get_int_array(const std::string& key) const {
  const GgufValue* v = value(key);
  if (!v) return std::nullopt;
  if (v->type != GgufValueType::kArray || !is_int_type(v->element_type)) {
    wrong_type(path_, key, "an array of integers", *v);
  }
  return std::get<std::vector<int64_t>>(v->value);
}

std::optional<std::vector<double>> GgufFile::get_float_array(const std::string& key) const {
  const GgufValue* v = value(key);
  if (!v) return std::nullopt;
  if (v->type == GgufValueType::kArray && is_float_type(v->element_type)) {
    return std::get<std::vector<double>>(v->value);
  }
  if (v->type == GgufValueType::kArray && is_int_type(v->element_type)) {
    const auto& ints = std::get<std::vector<int64_t>>(v->value);
    return std::vector<double>(ints.begin(), ints.end());
  }
  wrong_type(path_, key, "an array of numbers", *v);
}

std::optional<size_t> GgufFile::array_size(const std::string& key) const {
  const GgufValue* v = value(key);
  if (!v || v->type != GgufValueType::kArray) return std::nullopt;
  return std::visit(
      [](const auto& x) -> size_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, int64_t> || std::is_same_v<T, double> ||
                      std::is_same_v<T, bool> || std::is_same_v<T, std::string>) {
          return 0;
        } else {
          return x.size();
        }
      },
      v->value);
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

void GgufFile::drop_tensor_pages(const GgufTensorInfo& t) const noexcept {
  if (t.offset <= file_->size() && t.nbytes <= file_->size() - t.offset) {
    file_->drop_pages(file_->data() + t.offset, t.nbytes);
  }
}

const uint8_t* GgufFile::tensor_data(const GgufTensorInfo& t) const {
  // Infos from this file were checked at open; this guards against a foreign or edited one.
  if (t.offset > file_->size() || t.nbytes > file_->size() - t.offset) {
    throw FormatError(fmt::format("{}: tensor '{}': data [{}, +{}) is outside the file", path_,
                                  printable(t.name), t.offset, t.nbytes));
  }
  return file_->data() + t.offset;
}

}  // namespace attnvar

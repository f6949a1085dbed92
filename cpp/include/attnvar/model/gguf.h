// Defensive reader of GGUF files (versions 2 and 3), over a read-only mmap.
//
// Every count, string length, array length, tensor shape, offset and size is checked
// against the file size before it is used, so a truncated or corrupt file raises
// FormatError (naming the file and the field or tensor) and never reads out of bounds.
// Metadata is parsed eagerly into typed values; tensor data stays in the mapping and is
// read through tensor_data(). Torch-free.
//
// Layout (little-endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv
// key/value pairs, then n_tensors tensor infos {string name, u32 n_dims, u64 ne[n_dims],
// u32 type, u64 offset}, padding to `general.alignment` (default 32), then the data
// section; each tensor's offset is relative to the data section start.
//
// Names are bounded: a tensor name longer than kMaxGgufTensorName bytes (ggml itself allows
// 63) or a key longer than kMaxGgufKey bytes (the GGUF spec's limit) is a FormatError naming
// the tensor index or key index and the offset, so no later stage (name mapping, messages)
// ever handles an unbounded name. Names quoted in messages pass through printable().
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace attnvar {

class MappedFile;

inline constexpr uint64_t kMaxGgufTensorName = 256;  // bytes
inline constexpr uint64_t kMaxGgufKey = 65535;       // bytes (GGUF spec: keys < 2^16)

// ggml tensor types by their on-disk number. Files may hold others: GgufTensorInfo keeps
// the raw number, and reading an unsupported one raises FormatError.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  BF16 = 30 /* others may appear in files: keep the raw number */
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // GGUF order: ne[0] fastest
  uint32_t type;               // raw GgmlType number
  uint64_t offset;             // absolute file offset of data
  uint64_t nbytes;             // bytes of data, from the type's block layout
};

// GGUF metadata value types (the on-disk numbers).
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// One parsed metadata value. Integers of every width are widened to int64 (u64 values
// above INT64_MAX are rejected as corrupt), floats to double (an f32 to the double
// nearest its shortest decimal form: 1e-05 stays 1e-05). Arrays hold one element
// type (GGUF arrays are homogeneous); nested arrays are kept as empty with
// element_type kArray (no known key uses them).
struct GgufValue {
  GgufValueType type = GgufValueType::kUint8;
  GgufValueType element_type = GgufValueType::kUint8;  // for kArray
  std::variant<int64_t, double, bool, std::string, std::vector<int64_t>, std::vector<double>,
               std::vector<std::string>>
      value;
};

class GgufFile {
 public:
  // Maps and parses `path`. MissingError if it does not exist; FormatError naming the
  // file and the field for anything malformed (magic, version, counts, lengths, types,
  // tensor shapes/offsets/sizes beyond the file or overlapping).
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const;
  uint32_t version() const;
  bool has(const std::string& key) const;
  // Typed metadata access: std::nullopt when the key is absent; FormatError naming the
  // key when present with another type.
  std::optional<std::string> get_string(const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& key) const;   // any integer type
  std::optional<double> get_float(const std::string& key) const;  // f32/f64 (ints too)
  std::optional<bool> get_bool(const std::string& key) const;
  std::optional<std::vector<std::string>> get_string_array(const std::string& key) const;
  std::optional<std::vector<int64_t>> get_int_array(const std::string& key) const;
  std::optional<std::vector<double>> get_float_array(const std::string& key) const;
  // Keys in file order.
  std::vector<std::string> keys() const;
  // The raw parsed value; nullptr if absent.
  const GgufValue* value(const std::string& key) const;
  // Length of an array value without copying it (nullopt if absent or not an array).
  std::optional<size_t> array_size(const std::string& key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const;
  const GgufTensorInfo* find_tensor(const std::string& name) const;  // nullptr if absent
  // Pointer to the tensor's first byte inside the mapping (valid while *this lives);
  // nbytes bytes from it are inside the file (checked at open).
  const uint8_t* tensor_data(const GgufTensorInfo& t) const;
  // MappedFile::drop_pages for a tensor's bytes: once it has been decoded or copied.
  void drop_tensor_pages(const GgufTensorInfo& t) const noexcept;
  // The data section's alignment (general.alignment, default 32).
  uint64_t alignment() const;
  // Size of the mapped file in bytes.
  uint64_t file_size() const;

 private:
  void parse();

  std::string path_;
  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::string> key_order_;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

}  // namespace attnvar

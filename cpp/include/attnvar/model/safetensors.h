// Defensive reader of safetensors files, single or sharded, over read-only mmaps.
// Torch-free: tensors are exposed as views {name, dtype, shape, data, nbytes} into the
// mapping; weights.cpp turns them into torch tensors.
//
// Layout: u64 LE header length N, N bytes of JSON {name: {"dtype", "shape",
// "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data section;
// offsets are relative to its start. Checked before any tensor is exposed: N within the
// file and at most 100 MB, valid JSON object, a known dtype for every tensor, a shape of
// non-negative integers whose element count times the dtype size equals end - begin,
// begin <= end <= data size, and no two tensors' byte ranges overlapping. Errors are
// FormatError naming the file and the tensor or field; a missing file is MissingError.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace attnvar {

class MappedFile;

// A tensor inside a mapped safetensors file. `data` may be unaligned for its dtype
// (safetensors offsets need not be aligned): copy before typed access.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;           // safetensors spelling: "F32", "F16", "BF16", "I64", ...
  int64_t element_size = 0;    // bytes per element of dtype
  std::vector<int64_t> shape;  // row-major, as torch/numpy
  const void* data = nullptr;  // nbytes bytes inside the owning file's mapping
  uint64_t nbytes = 0;
  std::string file;  // the file holding it
};

// Bytes per element of a safetensors dtype; 0 for an unknown one. Known: BOOL, U8, I8,
// F8_E4M3, F8_E5M2, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64.
int64_t safetensors_dtype_size(const std::string& dtype);

// One `.safetensors` file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;

  const std::string& path() const { return path_; }
  // Tensors in data order (ascending offset).
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const SafetensorsTensor* find(const std::string& name) const;  // nullptr if absent
  // `__metadata__` (empty when absent); non-string values are kept as their JSON text.
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::string path_;
  std::unique_ptr<MappedFile> file_;
  std::vector<SafetensorsTensor> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a model: one `model.safetensors`, or the shards listed by
// `model.safetensors.index.json` (its `weight_map`: tensor name -> shard file name in the
// same directory). Each tensor must be in the shard the map names, and no tensor may be
// in two shards.
class SafetensorsModel {
 public:
  // `path`: a directory holding model.safetensors.index.json or model.safetensors (the
  // index wins when both exist), an index .json file, or a single .safetensors file.
  explicit SafetensorsModel(const std::string& path);

  // The files read, in sorted order (what a weights hash covers).
  std::vector<std::string> files() const;
  // All tensors, sorted by name.
  std::vector<const SafetensorsTensor*> tensors() const;
  const SafetensorsTensor* find(const std::string& name) const;  // nullptr if absent
  // Throws MissingError naming the tensor and the file(s) searched.
  const SafetensorsTensor& at(const std::string& name) const;
  // Where the weights were found (the directory, index or file given).
  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, const SafetensorsTensor*> by_name_;
};

}  // namespace attnvar

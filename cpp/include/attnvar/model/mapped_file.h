// A whole file mapped read-only into memory (RAII). Torch-free.
//
// Readers of model files (GGUF, safetensors) parse from the mapping and hand out
// pointers into it, so weights are never copied before dequantization or conversion.
// The mapping lives as long as the MappedFile; pointers from data() must not outlive it.
//
// Built with ATTNVAR_MAPPED_FILE_HEAP defined (the fuzzing build, fuzz/), the file is read
// into a heap buffer of exactly its size instead: AddressSanitizer then reports any read past
// the end, which inside the last page of a mapping would go unnoticed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace attnvar {

class MappedFile {
 public:
  // Maps `path` read-only. Throws MissingError if the file does not exist, FormatError
  // if it is not a regular file, is empty, or cannot be opened or mapped.
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  const uint8_t* data() const { return data_; }
  // Tells the kernel this process no longer needs the pages wholly inside [p, p + n) (a
  // tensor decoded or copied elsewhere): they leave its resident set and stay in the page
  // cache; reading them again maps them again, unchanged. A no-op outside the mapping and
  // in the heap build.
  void drop_pages(const uint8_t* p, uint64_t n) const noexcept;

 private:
  void release() noexcept;

  std::string path_;
  const uint8_t* data_ = nullptr;  // (size_,) bytes, PROT_READ
  uint64_t size_ = 0;
};

}  // namespace attnvar

// SHA-256 (FIPS 180-4), streaming. Torch-free. Identifies weights files: the hash of a
// model file is what `sha256sum` prints for it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace attnvar {

// kAuto: the CPU's SHA instructions where it has them (x86 SHA-NI), else portable C++;
// both give the same digest (tested), kPortable forces the second.
enum class Sha256Kernel { kAuto, kPortable };

class Sha256 {
 public:
  explicit Sha256(Sha256Kernel kernel = Sha256Kernel::kAuto);
  // Feeds `n` bytes; may be called any number of times.
  void update(const void* data, size_t n);
  // Finishes and returns the digest as 64 lowercase hex characters. The object must not
  // be updated afterwards.
  std::string hex_digest();

 private:
  void compress(const uint8_t* blocks, size_t n);  // n 64-byte blocks
  void compress_one(const uint8_t* block);          // portable, one block

  std::array<uint32_t, 8> state_;
  bool sha_ni_ = false;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

// SHA-256 of a whole file, read in chunks (MissingError if absent).
std::string sha256_file(const std::string& path);

}  // namespace attnvar

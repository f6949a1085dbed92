// Shared by the fuzz targets: the contract every target checks, and the input as a file.
//
// The contract (docs/development.md, "Fuzzing"): whatever the bytes, the code under test
// returns normally or throws attnvar::Error (FormatError, ConfigError, MissingError) whose
// message is non-empty valid UTF-8 once utf8_message() has escaped it, as the Python bindings
// do. Any other exception escapes LLVMFuzzerTestOneInput, and libFuzzer reports the input
// as a crash (std::terminate -> abort); so do sanitizer findings, timeouts and allocations
// above -malloc_limit_mb.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "attnvar/error.h"
#include "attnvar/tokenizer/utf8.h"

namespace attnvar::fuzz {

// Aborts (a finding) with `what` when `ok` is false.
inline void require(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz contract broken: %s\n", what);
    std::abort();
  }
}

// Checks an attnvar::Error's message the way the bindings will use it.
inline void check_error(const attnvar::Error& e) {
  const std::string message = attnvar::utf8_message(e.what());
  require(!message.empty(), "an attnvar error with an empty message");
  require(attnvar::utf8::is_valid(message), "utf8_message() left ill-formed UTF-8");
}

// The input written to a per-process file (in /dev/shm when it exists, so no disk I/O),
// for the readers that take a path. The file is rewritten for every input.
class InputFile {
 public:
  explicit InputFile(const char* suffix) {
    const char* dir = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : std::getenv("TMPDIR");
    path_ = std::string(dir ? dir : "/tmp") + "/attnvar-fuzz-" + std::to_string(::getpid()) +
            suffix;
  }
  ~InputFile() { ::unlink(path_.c_str()); }
  const std::string& write(const uint8_t* data, size_t size) {
    FILE* f = std::fopen(path_.c_str(), "wb");
    require(f != nullptr, "cannot create the input file");
    require(size == 0 || std::fwrite(data, 1, size, f) == size, "cannot write the input file");
    std::fclose(f);
    return path_;
  }

 private:
  std::string path_;
};

// Sums bytes so every one is read (ASan checks each read) and the loop is not optimised out.
inline void touch(const void* data, uint64_t size) {
  const auto* p = static_cast<const volatile uint8_t*>(data);
  uint8_t sum = 0;
  for (uint64_t i = 0; i < size; ++i) sum = static_cast<uint8_t>(sum + p[i]);
  static volatile uint8_t sink;
  sink = sum;
}

}  // namespace attnvar::fuzz

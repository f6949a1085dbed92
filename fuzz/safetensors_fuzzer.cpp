// Fuzz target: a .safetensors file. Parses the header and reads every byte of every
// tensor the header declares.
#include <cstdint>

#include "attnvar/model/safetensors.h"
#include "fuzz_input.h"

using namespace attnvar;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::InputFile input(".safetensors");
  const std::string& path = input.write(data, size);
  try {
    SafetensorsFile file(path);
    uint64_t previous_end = 0;
    for (const SafetensorsTensor& t : file.tensors()) {
      fuzz::require(file.find(t.name) == &t, "a listed tensor cannot be found");
      fuzz::require(t.element_size == safetensors_dtype_size(t.dtype), "element size");
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      fuzz::require(static_cast<uint64_t>(n * t.element_size) == t.nbytes,
                    "nbytes disagrees with shape and dtype");
      const auto* bytes = static_cast<const uint8_t*>(t.data);
      fuzz::require(bytes != nullptr || t.nbytes == 0, "tensor without data");
      // Data order: ascending and non-overlapping.
      const auto begin = static_cast<uint64_t>(bytes - static_cast<const uint8_t*>(
                                                           file.tensors().front().data));
      fuzz::require(begin >= previous_end, "tensors overlap or are out of order");
      previous_end = begin + t.nbytes;
      fuzz::touch(bytes, t.nbytes);
    }
    for (const auto& [key, value] : file.metadata()) {
      fuzz::touch(key.data(), key.size());
      fuzz::touch(value.data(), value.size());
    }
  } catch (const Error& e) {
    fuzz::check_error(e);
  }
  return 0;
}

// Fuzz target: a GGUF file. Parses it, reads every metadata value through each typed
// accessor, reads and dequantizes every tensor, and builds and drives the tokenizer its
// metadata describes.
#include <cstdint>
#include <vector>

#include "attnvar/model/dequantize.h"
#include "attnvar/model/gguf.h"
#include "attnvar/tokenizer/tokenizer.h"
#include "exercise_tokenizer.h"
#include "fuzz_input.h"

using namespace attnvar;

namespace {

void read_metadata(const GgufFile& file) {
  using T = GgufValueType;
  for (const std::string& key : file.keys()) {
    const GgufValue* v = file.value(key);
    fuzz::require(file.has(key) && v != nullptr, "a listed key has no value");
    // The accessor for the value's own type must succeed...
    switch (v->type) {
      case T::kString:
        fuzz::require(file.get_string(key).has_value(), "get_string failed on a string");
        break;
      case T::kBool:
        fuzz::require(file.get_bool(key).has_value(), "get_bool failed on a bool");
        break;
      case T::kFloat32:
      case T::kFloat64:
        fuzz::require(file.get_float(key).has_value(), "get_float failed on a float");
        break;
      case T::kArray:
        fuzz::require(file.array_size(key).has_value(), "array_size failed on an array");
        if (v->element_type == T::kString) (void)file.get_string_array(key);
        else if (v->element_type == T::kFloat32 || v->element_type == T::kFloat64)
          (void)file.get_float_array(key);
        else if (v->element_type != T::kArray && v->element_type != T::kBool)
          (void)file.get_int_array(key);
        break;
      default:
        fuzz::require(file.get_int(key).has_value(), "get_int failed on an integer");
    }
    // ...and one for another type must raise FormatError.
    try {
      if (v->type == T::kString) (void)file.get_bool(key);
      else (void)file.get_string(key);
      fuzz::require(false, "a typed accessor accepted a value of another type");
    } catch (const FormatError& e) {
      fuzz::check_error(e);
    }
  }
}

void read_tensors(const GgufFile& file) {
  std::vector<float> out;
  for (const GgufTensorInfo& t : file.tensors()) {
    fuzz::require(file.find_tensor(t.name) != nullptr, "a listed tensor cannot be found");
    fuzz::require(t.offset + t.nbytes <= file.file_size(), "tensor data past the file end");
    const uint8_t* data = file.tensor_data(t);
    fuzz::touch(data, t.nbytes);
    if (!ggml_can_dequantize(t.type)) continue;
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    fuzz::require(ggml_nbytes(t.type, n) == t.nbytes, "nbytes disagrees with the shape");
    out.resize(static_cast<size_t>(n));
    dequantize_row(t.type, data, n, out.data());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::InputFile input(".gguf");
  const std::string& path = input.write(data, size);
  try {
    GgufFile file(path);
    read_metadata(file);
    read_tensors(file);
    try {
      fuzz::exercise_tokenizer(Tokenizer::from_gguf(file));
    } catch (const Error& e) {
      fuzz::check_error(e);
    }
  } catch (const Error& e) {
    fuzz::check_error(e);
  }
  return 0;
}

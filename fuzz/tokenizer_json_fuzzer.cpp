// Fuzz target: the text of a tokenizer.json. Builds the tokenizer it describes and drives
// it through encode, decode and piece.
#include <cstdint>
#include <string_view>

#include "attnvar/tokenizer/tokenizer.h"
#include "exercise_tokenizer.h"
#include "fuzz_input.h"

using namespace attnvar;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const Tokenizer tok = Tokenizer::from_json(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz/tokenizer.json");
    fuzz::exercise_tokenizer(tok);
  } catch (const Error& e) {
    fuzz::check_error(e);
  }
  return 0;
}

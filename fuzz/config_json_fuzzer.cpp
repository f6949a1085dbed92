// Fuzz target: the text of an HF config.json, through the model-configuration reader.
#include <cstdint>
#include <string>

#include "attnvar/model/config.h"
#include "fuzz_input.h"

using namespace attnvar;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const ModelConfig config =
        config_from_hf_json(std::string(reinterpret_cast<const char*>(data), size),
                            "fuzz/config.json");
    (void)config;
  } catch (const Error& e) {
    fuzz::check_error(e);
  }
  return 0;
}

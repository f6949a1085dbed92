// Fuzz target: arbitrary text (and ids) through two fixed tokenizers, a byte-level BPE from
// a tokenizer.json and a SentencePiece-style BPE from a GGUF, both small ones kept in
// tests/data/fuzz/tokenizers (made by fuzz/make_seeds.py). Checks, beyond the shared
// contract:
//  - every id encode() gives is in range;
//  - byte-level BPE loses nothing: decode(encode(text)) is the text, with ill-formed UTF-8
//    replaced by U+FFFD as encode() documents;
//  - decode() and piece() of any ids (the input read as int32s) give valid UTF-8.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "attnvar/tokenizer/tokenizer.h"
#include "attnvar/tokenizer/utf8.h"
#include "fuzz_input.h"

using namespace attnvar;

namespace {

std::unique_ptr<Tokenizer> byte_level;
std::unique_ptr<Tokenizer> sentencepiece;

void check_ids(const Tokenizer& tok, const uint8_t* data, size_t size) {
  std::vector<int32_t> ids(size / 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    uint32_t raw;
    std::memcpy(&raw, data + 4 * i, 4);
    ids[i] = static_cast<int32_t>(raw % static_cast<uint32_t>(tok.vocab_size()));
  }
  for (bool skip : {false, true}) {
    fuzz::require(utf8::is_valid(tok.decode(ids, skip)), "decode() gave ill-formed UTF-8");
  }
  for (int32_t id : ids) fuzz::require(utf8::is_valid(tok.piece(id)), "piece() ill-formed");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string dir = std::string(ATTNVAR_FUZZ_DATA) + "/tokenizers";
  byte_level = std::make_unique<Tokenizer>(Tokenizer::from_json_file(dir + "/byte_level.json"));
  sentencepiece =
      std::make_unique<Tokenizer>(Tokenizer::from_gguf_file(dir + "/sentencepiece.gguf"));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  for (const Tokenizer* tok : {byte_level.get(), sentencepiece.get()}) {
    for (bool special : {false, true}) {
      for (int32_t id : tok->encode(text, special)) {
        fuzz::require(id >= 0 && id < tok->vocab_size(), "encode() gave an id out of range");
      }
    }
    check_ids(*tok, data, size);
  }
  const std::vector<int32_t> ids = byte_level->encode(text, false);
  fuzz::require(byte_level->decode(ids) == utf8::repair(text),
                "byte-level BPE: decode(encode(text)) is not the text");
  return 0;
}

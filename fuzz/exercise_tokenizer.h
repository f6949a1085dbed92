// Drives a loaded Tokenizer through its public API (fuzz targets that build one from
// fuzzed bytes), checking that every text it hands out is valid UTF-8: the bindings turn
// these strings into Python str, so ill-formed bytes would surface as UnicodeDecodeError.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <vector>

#include "attnvar/tokenizer/tokenizer.h"
#include "attnvar/tokenizer/utf8.h"
#include "fuzz_input.h"

namespace attnvar::fuzz {

inline void exercise_tokenizer(const Tokenizer& tok) {
  static constexpr std::string_view kTexts[] = {
      "Hello world! 123 4567",
      " leading  spaces\tand\nnewlines\r\n",
      "caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x98\x80 na\xc3\xafve",
      "<s></s><unk><|im_start|>user<|im_end|><|endoftext|>",
      "bad \xff\xfe bytes \xe2\x82",
  };
  const int32_t vocab = tok.vocab_size();
  require(vocab > 0, "a tokenizer with no ids");
  for (std::string_view text : kTexts) {
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = tok.encode(text, special);
      for (int32_t id : ids) require(id >= 0 && id < vocab, "encode() gave an id out of range");
      require(utf8::is_valid(tok.decode(ids, false)), "decode() gave ill-formed UTF-8");
      require(utf8::is_valid(tok.decode(ids, true)), "decode(skip_special) gave ill-formed UTF-8");
    }
  }
  // Every id (bounded, so a large vocabulary stays fast): piece and decode must be valid
  // text, or a ConfigError for an id with no token.
  const int32_t limit = std::min<int32_t>(vocab, 2048);
  std::vector<int32_t> all;
  for (int32_t id = 0; id < limit; ++id) {
    try {
      require(utf8::is_valid(tok.piece(id)), "piece() gave ill-formed UTF-8");
      const int32_t one[] = {id};
      require(utf8::is_valid(tok.decode(one)), "decode() of one id gave ill-formed UTF-8");
      (void)tok.is_special(id);
      // (Token text is raw bytes: a GGUF vocabulary may hold ill-formed UTF-8, which the
      // bindings escape.)
      require(tok.token_to_id(tok.id_to_token(id)).has_value(), "a token without an id");
      all.push_back(id);
    } catch (const ConfigError& e) {
      check_error(e);
    }
  }
  require(utf8::is_valid(tok.decode(all)), "decode() of all ids gave ill-formed UTF-8");
}

}  // namespace attnvar::fuzz

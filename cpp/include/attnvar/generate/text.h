// A tree as text, for reading: the prompt followed by every set, sets of two or more
// members in brackets. Torch-free.
#pragma once

#include <string>

#include "attnvar/generate/tree.h"

namespace attnvar {

class Tokenizer;

// "The cat sat on the[ mat/ floor] and": the prompt, then each step's set, a set of one
// member as its piece alone and a set of k ≥ 2 as "[" + pieces joined by "/" + "]", members
// in rank order. Pieces are Tokenizer::piece() (leading space kept, incomplete UTF-8 as
// "<0xNN>"); EOS members are shown like any other member. A leading BOS (prompt[0] ==
// tokenizer.bos_id()) is left out, as in the Python Run.bracketed.
// Throws ConfigError (naming the tokenizer's origin) for a token id the tokenizer has no
// token for, including ids outside [0, vocab_size()).
std::string bracketed_text(const Tree& tree, const Tokenizer& tokenizer);

// The top path as plain text: the prompt (leading BOS left out) and each set's rank-0
// member, as pieces. Same errors as bracketed_text.
std::string top_path_text(const Tree& tree, const Tokenizer& tokenizer);

}  // namespace attnvar

// A compiled Unicode regular expression (PCRE2, UTF + UCP, JIT when available) with the
// semantics HF tokenizers gets from Oniguruma: \s and \S mean White_Space (PCRE2's \s also
// takes U+180E), \w is letter|mark|number|connector punctuation, \h is a hex digit, and ^/$
// are line anchors. Patterns in tokenizer.json are written for Oniguruma, so they are
// rewritten to those meanings before compiling.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace attnvar {

class Regex {
 public:
  // A match [begin, end) in bytes.
  struct Match {
    std::size_t begin;
    std::size_t end;
  };

  // `context` names where the pattern came from (file and field) for error messages.
  // Throws ConfigError when the pattern does not compile.
  Regex(std::string_view pattern, std::string_view context);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // All non-overlapping matches, left to right, in valid UTF-8 text. An empty match is
  // reported, and the search then resumes one character later (Oniguruma's find_iter).
  std::vector<Match> find_all(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  struct Compiled;
  std::string pattern_;
  std::unique_ptr<Compiled> compiled_;
};

// The pattern with Oniguruma's class escapes rewritten for PCRE2 (see the file comment).
std::string oniguruma_to_pcre2(std::string_view pattern);

}  // namespace attnvar

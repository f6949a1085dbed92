// UTF-8 helpers shared by the tokenizer stages. Byte strings are std::string; "valid" means
// well-formed per Unicode §3.9, Table 3-7 (no overlongs, no surrogates, nothing above U+10FFFF).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace attnvar::utf8 {

// The length of the unit that starts at text[pos] (pos < text.size()), and whether it is a
// well-formed character. An ill-formed unit is the *maximal subpart* of Unicode §3.9: the longest
// prefix of a well-formed sequence found there, or one byte when none fits (so every call moves
// forward by at least one byte). Python's errors="replace" and Rust's from_utf8_lossy emit one
// U+FFFD per such unit.
struct Unit {
  std::size_t length;
  bool valid;
};
Unit unit_at(std::string_view text, std::size_t pos);

// Whether the whole string is well-formed UTF-8.
bool is_valid(std::string_view text);

// The text with every ill-formed unit replaced by U+FFFD (as Python's
// bytes.decode("utf-8", errors="replace")). Valid input comes back unchanged.
std::string repair(std::string_view text);

// The bytes shown to a reader: well-formed characters as themselves, every byte of an ill-formed
// unit as "<0xNN>" (uppercase hex). Used for pieces that hold part of a multi-byte character.
std::string render_bytes(std::string_view bytes);

// The code point of the well-formed character at text[pos]; pos advances past it.
// Precondition: unit_at(text, pos).valid.
char32_t decode(std::string_view text, std::size_t& pos);

// Appends the UTF-8 encoding of a Unicode scalar value.
void append(std::string& out, char32_t code_point);

// Number of characters (code points) in valid UTF-8 text.
std::size_t count_chars(std::string_view text);

}  // namespace attnvar::utf8

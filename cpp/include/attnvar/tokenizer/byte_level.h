// The byte-level alphabet of GPT-2 style BPE: each of the 256 byte values is spelled by one
// printable Unicode character, so a vocabulary of byte strings can be stored as text
// ("Ġthe" is the bytes " the"). Printable Latin-1 bytes spell themselves; the other 68
// (controls, space, 0x7F-0xA0, soft hyphen) take U+0100.. in byte order.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>

namespace attnvar::byte_level {

// The UTF-8 spelling of each byte value.
const std::array<std::string, 256>& alphabet();

// The bytes a token spells, or nullopt when a character of it lies outside the alphabet
// (an added token such as "<|im_start|>" spelled in plain text is inside it: ASCII printables
// spell themselves).
std::optional<std::string> to_bytes(std::string_view spelling);

// The alphabet spelling of raw bytes.
std::string to_spelling(std::string_view bytes);

}  // namespace attnvar::byte_level

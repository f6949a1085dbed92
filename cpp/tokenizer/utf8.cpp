#include "attnvar/tokenizer/utf8.h"

#include <fmt/format.h>

namespace attnvar::utf8 {

namespace {

// Allowed range of the second byte for each lead byte (Unicode Table 3-7); later continuation
// bytes are always 0x80..0xBF.
struct LeadRule {
  int continuation_count;  // -1: not a lead byte
  unsigned char second_lo;
  unsigned char second_hi;
};

LeadRule lead_rule(unsigned char b) {
  if (b < 0x80) return {0, 0, 0};
  if (b < 0xC2) return {-1, 0, 0};  // continuation bytes and overlong 2-byte leads
  if (b < 0xE0) return {1, 0x80, 0xBF};
  if (b == 0xE0) return {2, 0xA0, 0xBF};  // no overlong 3-byte forms
  if (b == 0xED) return {2, 0x80, 0x9F};  // no surrogates
  if (b < 0xF0) return {2, 0x80, 0xBF};
  if (b == 0xF0) return {3, 0x90, 0xBF};  // no overlong 4-byte forms
  if (b < 0xF4) return {3, 0x80, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};  // nothing above U+10FFFF
  return {-1, 0, 0};
}

}  // namespace

Unit unit_at(std::string_view text, std::size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  const LeadRule rule = lead_rule(lead);
  if (rule.continuation_count == 0) return {1, true};
  if (rule.continuation_count < 0) return {1, false};
  std::size_t length = 1;
  for (int k = 0; k < rule.continuation_count; ++k) {
    if (pos + length >= text.size()) return {length, false};
    const auto b = static_cast<unsigned char>(text[pos + length]);
    const unsigned char lo = k == 0 ? rule.second_lo : 0x80;
    const unsigned char hi = k == 0 ? rule.second_hi : 0xBF;
    if (b < lo || b > hi) return {length, false};
    ++length;
  }
  return {length, true};
}

bool is_valid(std::string_view text) {
  for (std::size_t pos = 0; pos < text.size();) {
    // ASCII fast path: most text is ASCII and needs no table lookups.
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const Unit unit = unit_at(text, pos);
    if (!unit.valid) return false;
    pos += unit.length;
  }
  return true;
}

std::string repair(std::string_view text) {
  if (is_valid(text)) return std::string(text);
  std::string out;
  out.reserve(text.size() + 8);
  for (std::size_t pos = 0; pos < text.size();) {
    const Unit unit = unit_at(text, pos);
    if (unit.valid) {
      out.append(text.substr(pos, unit.length));
    } else {
      out.append("\xEF\xBF\xBD");  // U+FFFD
    }
    pos += unit.length;
  }
  return out;
}

std::string render_bytes(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t pos = 0; pos < bytes.size();) {
    const Unit unit = unit_at(bytes, pos);
    if (unit.valid) {
      out.append(bytes.substr(pos, unit.length));
    } else {
      for (std::size_t k = 0; k < unit.length; ++k) {
        out += fmt::format("<0x{:02X}>", static_cast<unsigned char>(bytes[pos + k]));
      }
    }
    pos += unit.length;
  }
  return out;
}

char32_t decode(std::string_view text, std::size_t& pos) {
  const auto b0 = static_cast<unsigned char>(text[pos]);
  if (b0 < 0x80) {
    ++pos;
    return b0;
  }
  const int extra = b0 < 0xE0 ? 1 : b0 < 0xF0 ? 2 : 3;
  char32_t cp = b0 & (0x3F >> extra);
  for (int k = 1; k <= extra; ++k) {
    cp = (cp << 6) | (static_cast<unsigned char>(text[pos + k]) & 0x3F);
  }
  pos += static_cast<std::size_t>(extra) + 1;
  return cp;
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::size_t count_chars(std::string_view text) {
  std::size_t n = 0;
  for (char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

}  // namespace attnvar::utf8

#include "attnvar/tokenizer/byte_level.h"

#include "attnvar/tokenizer/utf8.h"

namespace attnvar::byte_level {

namespace {

struct Tables {
  std::array<std::string, 256> spelling;
  std::array<int, 324> byte_of_code_point;  // code points U+0000..U+0143; -1 when unused
};

const Tables& tables() {
  static const Tables t = [] {
    Tables out;
    out.byte_of_code_point.fill(-1);
    int next_shifted = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : next_shifted++;
      utf8::append(out.spelling[b], static_cast<char32_t>(cp));
      out.byte_of_code_point[cp] = b;
    }
    return out;
  }();
  return t;
}

}  // namespace

const std::array<std::string, 256>& alphabet() { return tables().spelling; }

std::optional<std::string> to_bytes(std::string_view spelling) {
  const Tables& t = tables();
  if (!utf8::is_valid(spelling)) return std::nullopt;
  std::string out;
  out.reserve(spelling.size());
  for (std::size_t pos = 0; pos < spelling.size();) {
    const char32_t cp = utf8::decode(spelling, pos);
    if (cp >= t.byte_of_code_point.size() || t.byte_of_code_point[cp] < 0) return std::nullopt;
    out += static_cast<char>(t.byte_of_code_point[cp]);
  }
  return out;
}

std::string to_spelling(std::string_view bytes) {
  const auto& spelling = tables().spelling;
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += spelling[static_cast<unsigned char>(c)];
  return out;
}

}  // namespace attnvar::byte_level

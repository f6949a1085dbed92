#include "attnvar/error.h"

#include <fmt/format.h>

#include <algorithm>

#include "attnvar/tokenizer/utf8.h"

namespace attnvar {
namespace {

void append_escaped(std::string& out, std::string_view bytes) {
  for (char b : bytes) out += fmt::format("\\x{:02x}", static_cast<unsigned char>(b));
}

}  // namespace

std::string printable(std::string_view bytes, std::size_t max_bytes) {
  std::string out;
  out.reserve(std::min(bytes.size(), max_bytes) + 16);
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    const utf8::Unit unit = utf8::unit_at(bytes, pos);
    if (pos + unit.length > max_bytes) break;
    const auto b = static_cast<unsigned char>(bytes[pos]);
    if (!unit.valid || b < 0x20 || b == 0x7f) {
      append_escaped(out, bytes.substr(pos, unit.length));
    } else {
      out.append(bytes.substr(pos, unit.length));
    }
    pos += unit.length;
  }
  if (pos < bytes.size()) out += fmt::format("...({} bytes)", bytes.size());
  return out;
}

std::string utf8_message(std::string_view message) {
  if (utf8::is_valid(message)) return std::string(message);
  std::string out;
  out.reserve(message.size() + 16);
  for (std::size_t pos = 0; pos < message.size();) {
    const utf8::Unit unit = utf8::unit_at(message, pos);
    if (unit.valid) {
      out.append(message.substr(pos, unit.length));
    } else {
      append_escaped(out, message.substr(pos, unit.length));
    }
    pos += unit.length;
  }
  return out;
}

}  // namespace attnvar

// Exceptions thrown by attnvar. Every message names its culprit (file, field, tensor,
// option or slot). The Python bindings map each class to a Python exception:
//   FormatError   -> attnvar.FormatError (a ValueError): a malformed, truncated or
//                    corrupt file, or a tensor whose type/shape does not fit.
//   ConfigError   -> attnvar.ConfigError (a ValueError): an unsupported architecture,
//                    option or out-of-range value.
//   MissingError  -> FileNotFoundError: a file or tensor that should exist does not.
//   Error         -> attnvar.AttnvarError (a RuntimeError): anything else.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace attnvar {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class FormatError : public Error {
 public:
  using Error::Error;
};

class ConfigError : public Error {
 public:
  using Error::Error;
};

class MissingError : public Error {
 public:
  using Error::Error;
};

// Bytes from a file quoted in a message (a tensor name, a metadata key or string, a JSON
// parser's echo of its input): well-formed UTF-8 characters other than ASCII control
// characters are kept; control characters and every byte of ill-formed UTF-8 become "\xNN";
// input past `max_bytes` is cut at a character boundary and "...(N bytes)" appended. The
// result is always valid UTF-8, so Python can decode the message.
std::string printable(std::string_view bytes, std::size_t max_bytes = 256);

// A whole message made valid UTF-8: each byte of ill-formed UTF-8 becomes "\xNN", everything
// else (newlines included) is kept. The Python bindings pass every message through it.
std::string utf8_message(std::string_view message);

}  // namespace attnvar

// Exceptions thrown by attnvar. Every message names its culprit (file, field, tensor,
// option or slot). The Python bindings map each class to a Python exception:
//   FormatError   -> attnvar.FormatError (a ValueError): a malformed, truncated or
//                    corrupt file, or a tensor whose type/shape does not fit.
//   ConfigError   -> attnvar.ConfigError (a ValueError): an unsupported architecture,
//                    option or out-of-range value.
//   MissingError  -> FileNotFoundError: a file or tensor that should exist does not.
//   Error         -> attnvar.AttnvarError (a RuntimeError): anything else.
#pragma once

#include <stdexcept>
#include <string>

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

}  // namespace attnvar

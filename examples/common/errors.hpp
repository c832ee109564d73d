// The example programs' own exceptions, apart from the library's lora::Error: a wrong flag, a
// missing data file or a malformed CSV row is a failure of the program, not of the library.
// What the library throws (lora::ConfigError from lora::inject, lora::FileError from
// safetensors::load, ...) passes through the examples unchanged. Standard C++ only, so that the
// readers that need no LibTorch (tokenizers, CSV) stay free of it. What a program prints for
// any of them: error_message.hpp.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace examples {

/// Concatenates its arguments with operator<< into one string: how the example code builds its
/// error messages.
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}

/// Base of every exception the example code throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// A command-line flag or value that is wrong: the message names the flag, the value and what
/// is allowed. The sweep programs exit with status 2 for it.
class UsageError : public Error {
 public:
  using Error::Error;
};

/// A file or folder that cannot be opened, read or written, or whose contents are not what it
/// should hold (a malformed CSV row, a tokenizer vocabulary, a checkpoint, a point file). The
/// message names the file.
class FileError : public Error {
 public:
  using Error::Error;
};

/// Data, or an option describing it, that does not fit what is asked of it: a split larger than
/// the file, a token id outside the vocabulary, a batch index out of range, model inputs or
/// checkpoint tensors of the wrong shape.
class DataError : public Error {
 public:
  using Error::Error;
};

}  // namespace examples

// lora::Error and its kinds. Every failure in the library throws one of these; the message
// says what failed, the value seen, and what to do about it. The library never prints or exits.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lora {

/// Base of every exception the library throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

/// A Config value (rank, alpha, dropout, pattern, policy) is invalid or does not fit a layer.
class ConfigError : public Error {
 public:
  using Error::Error;
};

/// A target, exclude or keep-trainable name matched nothing, or a module cannot be adapted.
class TargetError : public Error {
 public:
  using Error::Error;
};

/// Tensor shapes, dtypes or devices that do not fit together (state loading, merging).
class ShapeError : public Error {
 public:
  using Error::Error;
};

/// A plain torch::nn::Linear adapted through the compatibility path was used after its
/// adapter changed but before its effective weight was recomputed (see ModelAdapter::sync()).
class StaleWeightError : public Error {
 public:
  using Error::Error;
};

/// A file could not be opened, read, written, or has invalid contents.
class FileError : public Error {
 public:
  using Error::Error;
};

namespace detail {
/// Concatenates its arguments with operator<< into one string (messages without fmt).
template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}
}  // namespace detail

}  // namespace lora

// Checking one flag's value: a finite number, a positive one, an integer with a minimum, one
// of a list of names; each failure an examples::UsageError naming the flag, the value and what
// is allowed. Used by the command-line parser (cli.hpp) and by point_config.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "errors.hpp"

namespace sweep {
namespace detail {

inline std::string join(const std::vector<std::string>& v, const std::string& sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

/// `text` as a finite number, or an examples::UsageError naming `flag` and what it expects.
inline double number(const std::string& flag, const std::string& text, const std::string& expect) {
  char* end = nullptr;
  const double v = text.empty() ? NAN : std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v))
    throw examples::UsageError(flag + ": '" + text + "' is not a number; give " + expect + ".");
  return v;
}
inline double positive(const std::string& flag, const std::string& text, const std::string& expect) {
  const double v = number(flag, text, expect);
  if (!(v > 0)) throw examples::UsageError(flag + ": '" + text + "' is not allowed; give " + expect + ".");
  return v;
}
/// `text` as an integer >= `min`.
inline int64_t integer(const std::string& flag, const std::string& text, int64_t min) {
  const std::string expect = "an integer >= " + std::to_string(min);
  char* end = nullptr;
  const long long v = text.empty() ? 0 : std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0')
    throw examples::UsageError(flag + ": '" + text + "' is not an integer; give " + expect + ".");
  if (v < min) throw examples::UsageError(flag + ": '" + text + "' is not allowed; give " + expect + ".");
  return v;
}
inline std::string one_of(const std::string& flag, const std::string& text, const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), text) == allowed.end())
    throw examples::UsageError(flag + ": '" + text + "' is not allowed; use one of " + join(allowed) + ".");
  return text;
}

}  // namespace detail
}  // namespace sweep

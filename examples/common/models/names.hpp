// Names as the model loaders match and report them: starts_with / ends_with on checkpoint
// keys, join / some to put a list of names into a message, and str (examples::str), with
// which the loaders build their messages.
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "../errors.hpp"

namespace models {

namespace detail {

using examples::str;

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

/// "A, B" or "none".
inline std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "none" : out;
}

/// The first few names of `names`, for messages.
inline std::string some(const std::vector<std::string>& names, size_t n = 6) {
  std::vector<std::string> head(names.begin(), names.begin() + std::min(n, names.size()));
  return join(head) + (names.size() > n ? str(", ... (", names.size(), " in all)") : "");
}

}  // namespace detail

}  // namespace models

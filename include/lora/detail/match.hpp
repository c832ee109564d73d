// Name matching for targets, exclude, keep_trainable and rank/alpha patterns, and the
// "did you mean" suggestions of the errors.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "../error.hpp"

namespace lora::detail {

/// PEFT's rule: path == name, or path ends with "." + name.
inline bool suffix_match(const std::string& path, const std::string& name) {
  if (path == name) return true;
  return path.size() > name.size() && path.compare(path.size() - name.size(), name.size(), name) == 0 &&
         path[path.size() - name.size() - 1] == '.';
}

inline std::regex compile_regex(const std::string& pattern, const char* what) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw ConfigError(str("lora: ", what, " regex '", pattern, "' is invalid: ", e.what(), "."));
  }
}

/// PEFT's target / exclude rule for a list of names: path == name, or path ends with "." + name.
inline bool suffix_match_any(const std::vector<std::string>& names, const std::string& path) {
  for (const auto& n : names)
    if (suffix_match(path, n)) return true;
  return false;
}

/// `s` with every ECMAScript/Python regex metacharacter escaped.
inline std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c != '\0' && std::strchr(".^$|()[]{}*+?\\", c)) out += '\\';
    out += c;
  }
  return out;
}

inline bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
inline bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

/// One target / exclude entry: "re:<regex>" (full match) or a name (suffix match).
class Pattern {
 public:
  Pattern(const std::string& text, const char* what) : text_(text) {
    if (text.rfind("re:", 0) == 0) {
      is_regex_ = true;
      re_ = compile_regex(text.substr(3), what);
    }
  }
  bool matches(const std::string& path) const {
    return is_regex_ ? std::regex_match(path, re_) : suffix_match(path, text_);
  }
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  bool is_regex_ = false;
  std::regex re_;
};

/// PEFT's rank_pattern / alpha_pattern rule (its get_pattern_key): the value of the first key K,
/// in the container's order, for which "(.*\.)?(K)$" matches `path`, or nullptr. `Pairs`: a
/// std::map or a vector of (key, value) pairs (file order).
template <typename Pairs>
const typename Pairs::value_type::second_type* pattern_value(const Pairs& patterns, const std::string& path,
                                                             const char* what) {
  for (const auto& kv : patterns) {
    auto re = compile_regex("(.*\\.)?(" + kv.first + ")$", what);
    if (std::regex_match(path, re)) return &kv.second;
  }
  return nullptr;
}

inline size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

/// Up to `n` candidates closest to `name`, compared with each candidate's trailing components
/// of the same count as `name`'s (so "q_lni" is close to "...attention.q_lin").
inline std::vector<std::string> closest(const std::string& name, const std::vector<std::string>& candidates,
                                        size_t n = 3) {
  const auto parts = static_cast<size_t>(std::count(name.begin(), name.end(), '.')) + 1;
  std::vector<std::pair<size_t, std::string>> scored;
  std::vector<std::string> seen_tails;
  for (const auto& c : candidates) {
    size_t pos = c.size();
    for (size_t k = 0; k < parts && pos != std::string::npos; ++k) pos = pos == 0 ? std::string::npos : c.rfind('.', pos - 1);
    const std::string tail = pos == std::string::npos ? c : c.substr(pos + 1);
    scored.emplace_back(std::min(edit_distance(name, tail), edit_distance(name, c)), c);
  }
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  std::vector<std::string> out;
  for (size_t i = 0; i < scored.size() && out.size() < n; ++i) out.push_back(scored[i].second);
  return out;
}

inline std::string quoted_list(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "'" : ", '") + x + "'";
  return s.empty() ? "(none)" : s;
}

}  // namespace lora::detail

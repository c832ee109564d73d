// GPT-2's pre-tokenizer (step 1 of bpe.hpp): cuts text into the pieces that BPE then encodes
// one by one, as OpenAI's gpt-2 src/encoder.py does with the pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// implemented as a hand-written scanner (\s = the Unicode White_Space property, as in Python's
// `regex` module; \p{L}, \p{N} from utf8proc's general categories).
//
// Invalid UTF-8 (which Python's str never holds): each ill-formed sequence (its maximal
// subpart; see unicode.hpp) is read as one character of the "other" class [^\s\p{L}\p{N}], so
// it joins the neighbouring punctuation run. Every byte of the text lands in exactly one piece.
#pragma once

#include <cstddef>
#include <string_view>

#include "text/unicode.hpp"

namespace text::gpt2 {

namespace detail {

/// Character classes of the pre-tokenization pattern.
enum class Cls : unsigned char { kLetter, kNumber, kSpace, kOther };

/// Class of one decoded character; an invalid byte sequence is "other".
inline Cls classify(const unicode::Step& st) {
  const char32_t cp = st.cp;
  if (!st.valid) return Cls::kOther;
  if (cp < 0x80) {
    if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return Cls::kLetter;
    if (cp >= '0' && cp <= '9') return Cls::kNumber;
    return (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) ? Cls::kSpace : Cls::kOther;
  }
  if (unicode::is_white_space(cp)) return Cls::kSpace;
  const auto cat = unicode::category(cp);
  if (unicode::is_letter(cat)) return Cls::kLetter;
  return unicode::is_number(cat) ? Cls::kNumber : Cls::kOther;
}

/// Length of the contraction ('s 't 're 've 'm 'll 'd) at s[i] == '\'', or 0.
inline std::size_t contraction_length(std::string_view s, std::size_t i) {
  const auto rest = s.substr(i + 1);
  if (rest.empty()) return 0;
  if (rest[0] == 's' || rest[0] == 't' || rest[0] == 'm' || rest[0] == 'd') return 2;
  if (rest.size() >= 2 && (rest.compare(0, 2, "re") == 0 || rest.compare(0, 2, "ve") == 0 || rest.compare(0, 2, "ll") == 0)) return 3;
  return 0;
}

/// End of the run of class-`cls` characters starting at s[i].
inline std::size_t run_end(std::string_view s, std::size_t i, Cls cls) {
  while (i < s.size()) {
    const auto st = unicode::decode(s, i);
    if (classify(st) != cls) break;
    i += st.len;
  }
  return i;
}

/// End of the pre-token starting at s[i]: the pattern's alternatives, tried in order.
inline std::size_t pre_token_end(std::string_view s, std::size_t i) {
  if (s[i] == '\'') {
    if (const auto n = contraction_length(s, i)) return i + n;
  }
  Cls cls = classify(unicode::decode(s, i));
  std::size_t start = i;
  if (s[i] == ' ' && i + 1 < s.size()) {  // the optional leading space of " ?X+"
    const Cls next = classify(unicode::decode(s, i + 1));
    if (next != Cls::kSpace) cls = next, start = i + 1;
  }
  if (cls != Cls::kSpace) return run_end(s, start, cls);
  // \s+(?!\S) takes a whitespace run that ends the text, else all of it but its last
  // character; a single whitespace character before \S falls through to \s+.
  std::size_t last = i, end = i, count = 0;
  while (end < s.size()) {
    const auto st = unicode::decode(s, end);
    if (classify(st) != Cls::kSpace) break;
    last = end, end += st.len, ++count;
  }
  return (end == s.size() || count == 1) ? end : last;
}

}  // namespace detail

/// Calls f(pre-token) for each pre-token of `text`, in order, as views into it.
template <typename F>
void for_each_pre_token(std::string_view text, F&& f) {
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t end = detail::pre_token_end(text, i);
    f(text.substr(i, end - i));
    i = end;
  }
}

}  // namespace text::gpt2

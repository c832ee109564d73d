// UTF-8 decoding and encoding, and the Unicode properties the tokenizers need (general
// categories, White_Space, canonical decomposition, Python-style lowercasing), on utf8proc.
//
// Invalid UTF-8: decode() never reads past the input and never throws. An ill-formed
// sequence comes back as one invalid step covering its "maximal subpart" (the longest prefix
// of a well-formed sequence, at least one byte), the unit Python's
// bytes.decode("utf-8", errors="replace") turns into one U+FFFD. Each tokenizer decides what
// an invalid step means (see bert_basic_tokenizer.hpp and gpt2_pretokenizer.hpp).
#pragma once

#include <utf8proc.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace text::unicode {

inline constexpr char32_t kReplacement = 0xFFFD;

/// One decoded code point: `cp` (U+FFFD when invalid), how many bytes it took, and whether
/// those bytes were well-formed UTF-8.
struct Step {
  char32_t cp;
  std::uint32_t len;
  bool valid;
};

/// Decodes the code point that starts at byte `i` of `s` (i < s.size()). Rejects overlong
/// forms, surrogates and values above U+10FFFF, as the Unicode standard requires.
inline Step decode(std::string_view s, std::size_t i) noexcept {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  const std::size_t left = s.size() - i;
  const unsigned b0 = p[0];
  if (b0 < 0x80) return {b0, 1, true};
  std::uint32_t need = 0;
  char32_t cp = 0;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the next byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong 3-byte forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // no overlong 4-byte forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return {kReplacement, 1, false};
  }
  for (std::uint32_t k = 1; k <= need; ++k) {
    if (k >= left || p[k] < lo || p[k] > hi) return {kReplacement, k, false};
    cp = (cp << 6) | (p[k] & 0x3F);
    lo = 0x80, hi = 0xBF;
  }
  return {cp, need + 1, true};
}

/// Appends the UTF-8 encoding of the scalar value `cp` to `out`.
inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

/// The general category of `cp` (UTF8PROC_CATEGORY_CN for unassigned code points).
inline utf8proc_category_t category(char32_t cp) noexcept {
  return utf8proc_category(static_cast<utf8proc_int32_t>(cp));
}

/// Category tests by major class: L*, N*, P*, C* (Cc, Cf, Cs, Co, Cn).
inline bool is_letter(utf8proc_category_t c) noexcept {
  return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}
inline bool is_number(utf8proc_category_t c) noexcept {
  return c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO;
}
inline bool is_punctuation(utf8proc_category_t c) noexcept {
  return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}
inline bool is_other(utf8proc_category_t c) noexcept {
  return c == UTF8PROC_CATEGORY_CN || (c >= UTF8PROC_CATEGORY_CC && c <= UTF8PROC_CATEGORY_CO);
}

/// The Unicode White_Space property: what `\s` matches in Python's `regex` module.
inline bool is_white_space(char32_t cp) noexcept {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
  if (cp < 0x85) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/// The canonical combining class of `cp` (0 for starters).
inline int combining_class(char32_t cp) noexcept {
  if (cp < 0x300) return 0;
  return utf8proc_get_property(static_cast<utf8proc_int32_t>(cp))->combining_class;
}

namespace detail {

/// Python's "cased" (the Cased property) for characters that are not case-ignorable: Lu, Ll,
/// Lt, characters with a case mapping, and the few Other_Lowercase/Other_Uppercase ones
/// without one (ª º and the squared/circled Latin capitals in U+1F130..U+1F189).
inline bool is_cased(char32_t cp) noexcept {
  const auto c = category(cp);
  if (c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT) return true;
  if (cp == 0xAA || cp == 0xBA || (cp >= 0x1F130 && cp <= 0x1F149) || (cp >= 0x1F150 && cp <= 0x1F169) ||
      (cp >= 0x1F170 && cp <= 0x1F189))
    return true;
  const auto i = static_cast<utf8proc_int32_t>(cp);
  return utf8proc_tolower(i) != i || utf8proc_toupper(i) != i;
}

/// Python's "case-ignorable": Mn, Me, Cf, Lm, Sk and the word-internal quotes and dots
/// (Word_Break MidLetter, MidNumLet, Single_Quote).
inline bool is_case_ignorable(char32_t cp) noexcept {
  switch (category(cp)) {
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      break;
  }
  switch (cp) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018:
    case 0x2019: case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07:
    case 0xFF0E: case 0xFF1A:
      return true;
    default:
      return false;
  }
}

/// Python's Final_Sigma rule for the capital sigma at `i`: a cased letter before it and none
/// after it (skipping case-ignorable characters both ways).
inline bool is_final_sigma(std::u32string_view s, std::size_t i) noexcept {
  std::size_t j = i;
  while (j > 0 && is_case_ignorable(s[j - 1])) --j;
  if (j == 0 || !is_cased(s[j - 1])) return false;
  std::size_t k = i + 1;
  while (k < s.size() && is_case_ignorable(s[k])) ++k;
  return k == s.size() || !is_cased(s[k]);
}

}  // namespace detail

/// Appends Python's `s.lower()` of `s` to `out`: per-character simple lowercase mappings plus
/// Python's two context rules, U+0130 -> "i\u0307" and a word-final capital sigma -> U+03C2.
inline void append_lower(std::u32string_view s, std::u32string& out) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char32_t cp = s[i];
    if (cp < 0x80) {
      out += (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    } else if (cp == 0x130) {
      out += U"i\u0307";
    } else if (cp == 0x3A3) {
      out += detail::is_final_sigma(s, i) ? char32_t{0x3C2} : char32_t{0x3C3};
    } else {
      out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(cp)));
    }
  }
}

/// Puts each run of combining marks (combining class != 0) in canonical order (a stable sort
/// by combining class), the last step of NFD.
inline void canonical_order(std::u32string& s, std::size_t from) {
  std::size_t i = from;
  while (i < s.size()) {
    if (combining_class(s[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < s.size() && combining_class(s[j]) != 0) ++j;
    std::stable_sort(s.begin() + static_cast<std::ptrdiff_t>(i), s.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
}

/// Appends the NFD form (canonical decomposition, canonical order) of `s` to `out`.
inline void append_nfd(std::u32string_view s, std::u32string& out) {
  const std::size_t from = out.size();
  bool beyond_latin1 = false;  // only then can combining marks need reordering
  for (char32_t cp : s) {
    if (cp < 0xC0) {  // nothing below U+00C0 decomposes canonically
      out += cp;
      continue;
    }
    utf8proc_int32_t buf[8];
    int boundclass = 0;
    const auto n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), buf, 8, UTF8PROC_DECOMPOSE, &boundclass);
    if (n <= 0 || n > 8) {  // cannot happen for scalar values; keep the character as is
      out += cp;
      continue;
    }
    for (utf8proc_ssize_t k = 0; k < n; ++k) out += static_cast<char32_t>(buf[k]);
    beyond_latin1 = true;
  }
  if (beyond_latin1) canonical_order(out, from);
}

}  // namespace text::unicode

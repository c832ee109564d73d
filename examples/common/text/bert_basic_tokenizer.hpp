// BERT's basic tokenizer (steps 1-5 of wordpiece.hpp): cuts text into the pieces that WordPiece
// then matches against the vocabulary, as Hugging Face's BasicTokenizer (tokenization_bert.py)
// does with do_lower_case=True, tokenize_chinese_chars=True and strip_accents=None (so accents
// are stripped):
//   1. cleaning: drop U+0000, U+FFFD and every C* character except \t \n \r; turn \t \n \r and
//      Zs characters into a space;
//   2. a space on each side of every CJK ideograph (the blocks BertTokenizer lists);
//   3. split on whitespace (spaces, plus U+2028/U+2029, which Python's str.split() also cuts at);
//   4. per word: Python's str.lower(), NFD, drop Mn (accents);
//   5. split off each punctuation character (ASCII 33-47, 58-64, 91-96, 123-126, and P*).
//
// Recent HF versions also apply NFC before step 3; it changes nothing here, since step 4's NFD
// follows and NFC creates no whitespace. Character properties come from utf8proc's Unicode
// tables, so code points assigned after the Python build's Unicode version may differ.
//
// Invalid UTF-8: Python receives str, so it never sees such bytes; each ill-formed sequence is
// read as U+FFFD (what bytes.decode(errors="replace") would give), which step 1 then drops. So
// "ab\xFFcd" splits as "abcd".
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "text/unicode.hpp"

namespace text::bert {

/// One piece of the output, in UTF-8, with the byte offset of each of its code points and of
/// its end, so that WordPiece can cut it at code points without decoding it again.
struct Piece {
  std::string utf8;
  std::vector<std::uint32_t> offsets{0};

  /// Number of code points.
  std::size_t size() const { return offsets.size() - 1; }
};

namespace detail {

/// What cleaning (steps 1-2) does with a character.
enum class Clean { kDrop, kSpace, kCjk, kKeep };

/// The CJK ideograph blocks of BertTokenizer._is_chinese_char.
inline bool is_cjk(char32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/// Steps 1-3 for one character: _clean_text, _tokenize_chinese_chars, str.split separators.
inline Clean clean_class(char32_t cp) {
  if (cp < 0x80) {
    if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return Clean::kSpace;
    return (cp < 0x20 || cp == 0x7F) ? Clean::kDrop : Clean::kKeep;
  }
  if (cp == unicode::kReplacement) return Clean::kDrop;
  if (is_cjk(cp)) return Clean::kCjk;
  const auto cat = unicode::category(cp);
  if (cat == UTF8PROC_CATEGORY_ZS || cp == 0x2028 || cp == 0x2029) return Clean::kSpace;
  return unicode::is_other(cat) ? Clean::kDrop : Clean::kKeep;
}

/// BERT's punctuation: every non-alphanumeric printable ASCII character, and P*.
inline bool is_punctuation(char32_t cp) {
  if (cp < 0x80) return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
  return unicode::is_punctuation(unicode::category(cp));
}

/// Reusable buffers of one call, so no per-character allocation happens.
struct Scratch {
  std::u32string word, lowered, normalized;  // one whitespace-separated word, in stages
  Piece piece;                               // one punctuation-free piece
};

/// Hands s.piece, unless empty, to on_piece, then clears it.
template <typename F>
void flush_piece(Scratch& s, F& on_piece) {
  if (s.piece.size() == 0) return;
  on_piece(static_cast<const Piece&>(s.piece));
  s.piece.utf8.clear();
  s.piece.offsets.resize(1);
}

/// Steps 4-5 for the word in s.word, which it then clears.
template <typename F>
void flush_word(Scratch& s, F& on_piece) {
  if (s.word.empty()) return;
  s.lowered.clear();
  unicode::append_lower(s.word, s.lowered);
  s.normalized.clear();
  unicode::append_nfd(s.lowered, s.normalized);
  for (char32_t cp : s.normalized) {
    if (cp >= 0x300 && unicode::category(cp) == UTF8PROC_CATEGORY_MN) continue;  // accent
    const bool punct = is_punctuation(cp);
    if (punct) flush_piece(s, on_piece);
    unicode::append_utf8(s.piece.utf8, cp);
    s.piece.offsets.push_back(static_cast<std::uint32_t>(s.piece.utf8.size()));
    if (punct) flush_piece(s, on_piece);
  }
  flush_piece(s, on_piece);
  s.word.clear();
}

}  // namespace detail

/// Calls on_piece(const Piece&) for each piece of `text`, in order (steps 1-5). The piece is
/// reused for the next one: copy what must outlive the call.
template <typename F>
void basic_tokenize(std::string_view text, F&& on_piece) {
  detail::Scratch s;
  for (std::size_t i = 0; i < text.size();) {
    const auto step = unicode::decode(text, i);
    i += step.len;
    if (!step.valid) continue;  // read as U+FFFD, which cleaning drops
    switch (detail::clean_class(step.cp)) {
      case detail::Clean::kDrop:
        break;
      case detail::Clean::kSpace:
        detail::flush_word(s, on_piece);
        break;
      case detail::Clean::kCjk:
        detail::flush_word(s, on_piece);
        s.word += step.cp;
        detail::flush_word(s, on_piece);
        break;
      case detail::Clean::kKeep:
        s.word += step.cp;
        break;
    }
  }
  detail::flush_word(s, on_piece);
}

}  // namespace text::bert

// BERT uncased WordPiece tokenizer: the behaviour of Hugging Face's BertTokenizer
// (tokenization_bert.py) with do_lower_case=True, tokenize_chinese_chars=True,
// strip_accents=None (so accents are stripped) and max_input_chars_per_word=100.
//
// Pipeline, as in BasicTokenizer + WordpieceTokenizer:
//   1. cleaning: drop U+0000, U+FFFD and every C* character except \t \n \r; turn \t \n \r and
//      Zs characters into a space;
//   2. a space on each side of every CJK ideograph (the blocks BertTokenizer lists);
//   3. split on whitespace (spaces, plus U+2028/U+2029, which Python's str.split() also cuts at);
//   4. per word: Python's str.lower(), NFD, drop Mn (accents);
//   5. split off each punctuation character (ASCII 33-47, 58-64, 91-96, 123-126, and P*);
//   6. greedy longest-match-first WordPiece with "##" continuations; a piece of more than 100
//      code points, or one the vocabulary cannot cover, becomes [UNK].
//
// Recent HF versions also apply NFC before step 3; it changes nothing here, since step 4's NFD
// follows and NFC creates no whitespace. Character properties come from utf8proc's Unicode
// tables, so code points assigned after the Python build's Unicode version may differ.
//
// Choices:
//   - invalid UTF-8: Python receives str, so it never sees such bytes; each ill-formed sequence is
//     read as U+FFFD (what bytes.decode(errors="replace") would give), which step 1 then drops. So
//     "ab\xFFcd" tokenizes as "abcd".
//   - special-token strings in the text ("[SEP]") are plain text here (split into "[", "sep", "]"),
//     as with HF's split_special_tokens=True: input text cannot inject control tokens.
//
// Thread safety: a tokenizer is immutable after loading; encode() and friends may run on many
// threads at once. Copies share the vocabulary.
#pragma once

#include <lora/error.hpp>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "errors.hpp"
#include "text/unicode.hpp"

namespace text {

using examples::DataError;
using examples::FileError;

/// How encode_batch() pads: to the longest row, or every row to max_length.
enum class Padding { kLongest, kMaxLength };

/// A padded batch, row-major: rows x cols ids, and a mask with 1 for real tokens, 0 for padding.
struct EncodedBatch {
  std::vector<std::int64_t> input_ids;
  std::vector<std::int64_t> attention_mask;
  std::size_t rows = 0;
  std::size_t cols = 0;
};

class WordPieceTokenizer {
 public:
  static constexpr std::size_t kMaxInputCharsPerWord = 100;

  /// Loads `vocab_file` (one token per line, id = line number, as HF's load_vocab reads it; a
  /// trailing "\r" is also removed). Throws examples::FileError if the file cannot be read or
  /// lacks one of [PAD] [UNK] [CLS] [SEP] [MASK].
  explicit WordPieceTokenizer(const std::filesystem::path& vocab_file)
      : vocab_(std::make_shared<const Vocab>(load(vocab_file))) {}

  /// Token ids of `text`: [CLS] pieces [SEP] (or just the pieces). With max_length > 0, cut to
  /// at most max_length ids, keeping [CLS] first and [SEP] last.
  std::vector<std::int64_t> encode(std::string_view text, bool add_special_tokens = true,
                                   std::size_t max_length = 0) const {
    if (add_special_tokens && max_length == 1)
      throw DataError("WordPieceTokenizer::encode: max_length 1 leaves no room for [CLS] and [SEP]; use 0 (no limit) or >= 2");
    std::vector<std::int64_t> ids;
    if (add_special_tokens) ids.push_back(vocab_->cls);
    append_ids(text, ids);
    if (max_length > 0 && ids.size() + (add_special_tokens ? 1 : 0) > max_length)
      ids.resize(max_length - (add_special_tokens ? 1 : 0));
    if (add_special_tokens) ids.push_back(vocab_->sep);
    return ids;
  }

  /// Encodes each text (truncated to max_length when > 0) and pads with [PAD] to the longest
  /// row or, with Padding::kMaxLength, to exactly max_length columns.
  EncodedBatch encode_batch(const std::vector<std::string>& texts, std::size_t max_length = 0,
                            Padding padding = Padding::kLongest, bool add_special_tokens = true) const {
    if (padding == Padding::kMaxLength && max_length == 0)
      throw DataError("WordPieceTokenizer::encode_batch: Padding::kMaxLength needs max_length > 0");
    std::vector<std::vector<std::int64_t>> rows;
    rows.reserve(texts.size());
    std::size_t longest = 0;
    for (const auto& t : texts) {
      rows.push_back(encode(t, add_special_tokens, max_length));
      longest = std::max(longest, rows.back().size());
    }
    EncodedBatch batch;
    batch.rows = rows.size();
    batch.cols = padding == Padding::kMaxLength ? max_length : longest;
    batch.input_ids.assign(batch.rows * batch.cols, vocab_->pad);
    batch.attention_mask.assign(batch.rows * batch.cols, 0);
    for (std::size_t r = 0; r < rows.size(); ++r) {
      std::copy(rows[r].begin(), rows[r].end(), batch.input_ids.begin() + static_cast<std::ptrdiff_t>(r * batch.cols));
      std::fill_n(batch.attention_mask.begin() + static_cast<std::ptrdiff_t>(r * batch.cols), rows[r].size(), 1);
    }
    return batch;
  }

  /// The word pieces of `text` as strings ("un", "##aff", "##able"), without special tokens.
  std::vector<std::string> tokenize(std::string_view text) const {
    std::vector<std::int64_t> ids;
    append_ids(text, ids);
    std::vector<std::string> out;
    out.reserve(ids.size());
    for (auto i : ids) out.push_back(vocab_->tokens[static_cast<std::size_t>(i)]);
    return out;
  }

  /// Text of `ids` as HF's convert_tokens_to_string: tokens joined by spaces, " ##" removed,
  /// outer spaces stripped. skip_special_tokens drops [PAD] [UNK] [CLS] [SEP] [MASK].
  /// Throws examples::DataError for an id outside [0, vocab_size()).
  std::string decode(const std::vector<std::int64_t>& ids, bool skip_special_tokens = false) const {
    std::string joined;
    for (auto i : ids) {
      if (skip_special_tokens && is_special(i)) continue;
      if (!joined.empty()) joined += ' ';
      joined += token(i);
    }
    std::string out;
    out.reserve(joined.size());
    for (std::size_t i = 0; i < joined.size(); ++i) {
      if (joined.compare(i, 3, " ##") == 0) {
        i += 2;
        continue;
      }
      out += joined[i];
    }
    const auto first = out.find_first_not_of(" \t\n\r\f\v");
    if (first == std::string::npos) return {};
    return out.substr(first, out.find_last_not_of(" \t\n\r\f\v") - first + 1);
  }

  /// Id of `token` (a whole vocabulary entry such as "##ing"); unk_id() if absent, as in HF.
  std::int64_t id(std::string_view token) const {
    const auto found = vocab_->whole.find(token, vocab_->tokens);
    return found < 0 ? vocab_->unk : found;
  }

  /// The vocabulary entry of `id`; throws examples::DataError outside [0, vocab_size()).
  const std::string& token(std::int64_t id) const {
    if (id < 0 || static_cast<std::size_t>(id) >= vocab_->tokens.size())
      throw DataError(examples::str("WordPieceTokenizer: id ", id, " is outside the vocabulary [0, ", vocab_->tokens.size(), ")"));
    return vocab_->tokens[static_cast<std::size_t>(id)];
  }

  std::int64_t pad_id() const { return vocab_->pad; }
  std::int64_t unk_id() const { return vocab_->unk; }
  std::int64_t cls_id() const { return vocab_->cls; }
  std::int64_t sep_id() const { return vocab_->sep; }
  std::int64_t mask_id() const { return vocab_->mask; }
  /// Number of lines of vocab.txt: every id is below it (30522 for bert-base-uncased).
  std::size_t vocab_size() const { return vocab_->tokens.size(); }

 private:
  /// Open-addressing hash table (linear probing, at most half full) from vocabulary entries
  /// to ids. A slot holds a hash tag and an id; its key is tokens[id] less `skip` leading bytes
  /// ("##" for the continuation table), so the table stores no strings of its own.
  class PieceTable {
   public:
    PieceTable(std::size_t entries, std::size_t skip) : skip_(skip) {
      std::size_t n = 16;
      while (n < 2 * entries) n *= 2;
      slots_.resize(n);
    }

    /// Maps `key` (tokens[id] less skip bytes) to `id`; a later duplicate wins, as in HF's dict.
    void insert(std::int32_t id, const std::vector<std::string>& tokens) {
      const std::string_view key = std::string_view(tokens[static_cast<std::size_t>(id)]).substr(skip_);
      const std::uint64_t h = hash(key);
      std::size_t i = slot_of(h);
      while (slots_[i].tag != 0 && !(slots_[i].tag == tag_of(h) && key_of(slots_[i], tokens) == key)) i = next(i);
      slots_[i] = {tag_of(h), id};
      longest_ = std::max(longest_, count_code_points(key));
    }

    /// Id of `key`, or -1.
    std::int64_t find(std::string_view key, const std::vector<std::string>& tokens) const {
      const std::uint64_t h = hash(key);
      for (std::size_t i = slot_of(h); slots_[i].tag != 0; i = next(i))
        if (slots_[i].tag == tag_of(h) && key_of(slots_[i], tokens) == key) return slots_[i].id;
      return -1;
    }

    /// Length of the longest key, in code points: no longer substring can match.
    std::size_t longest() const { return longest_; }

   private:
    struct Slot {
      std::uint32_t tag = 0;  // 0: empty
      std::int32_t id = -1;
    };

    /// A fast 64-bit hash of short byte strings (8 bytes per multiply-xorshift round).
    static std::uint64_t hash(std::string_view s) noexcept {
      std::uint64_t h = 0x9E3779B97F4A7C15ULL ^ (s.size() * 0xFF51AFD7ED558CCDULL);
      std::size_t i = 0;
      for (; i + 8 <= s.size(); i += 8) {
        std::uint64_t w;
        std::memcpy(&w, s.data() + i, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
      }
      std::uint64_t w = 0;
      std::memcpy(&w, s.data() + i, s.size() - i);
      h = (h ^ w) * 0x94D049BB133111EBULL;
      return h ^ (h >> 29);
    }
    static std::size_t count_code_points(std::string_view s) {
      return static_cast<std::size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
    }
    static std::uint32_t tag_of(std::uint64_t h) noexcept { return static_cast<std::uint32_t>(h >> 32) | 1U; }
    std::size_t slot_of(std::uint64_t h) const noexcept { return static_cast<std::size_t>(h) & (slots_.size() - 1); }
    std::size_t next(std::size_t i) const noexcept { return (i + 1) & (slots_.size() - 1); }
    std::string_view key_of(const Slot& s, const std::vector<std::string>& tokens) const {
      return std::string_view(tokens[static_cast<std::size_t>(s.id)]).substr(skip_);
    }

    std::vector<Slot> slots_;
    std::size_t skip_;
    std::size_t longest_ = 0;
  };

  /// The loaded vocabulary, shared by copies of the tokenizer.
  struct Vocab {
    std::vector<std::string> tokens;  // id -> token
    PieceTable whole{0, 0};           // token -> id (the start of a word)
    PieceTable suffix{0, 2};          // "x" -> id of "##x" (the rest of a word)
    std::int64_t pad = 0, unk = 0, cls = 0, sep = 0, mask = 0;
  };

  /// Reusable buffers of one call, so no per-character allocation happens.
  struct Scratch {
    std::u32string word, lowered, normalized;  // one whitespace-separated word, in stages
    std::string piece;                         // one punctuation-free piece, UTF-8
    std::vector<std::uint32_t> offsets{0};     // byte offset of each code point of `piece`, and its end
  };

  /// What cleaning (steps 1-2) does with a character.
  enum class Clean { kDrop, kSpace, kCjk, kKeep };

  /// Reads vocab.txt and finds the special tokens.
  static Vocab load(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
      throw FileError(examples::str("cannot open the WordPiece vocabulary '", path.string(), "': ", std::strerror(errno),
                                  ". Pass the vocab.txt of an uncased BERT model (bert-base-uncased, distilbert-base-uncased)."));
    Vocab v;
    for (std::string line; std::getline(in, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      v.tokens.push_back(std::move(line));
    }
    if (v.tokens.size() > static_cast<std::size_t>(INT32_MAX))
      throw FileError(examples::str("the WordPiece vocabulary '", path.string(), "' has too many lines (", v.tokens.size(), ")."));
    v.whole = PieceTable(v.tokens.size(), 0);
    v.suffix = PieceTable(v.tokens.size(), 2);
    for (std::size_t id = 0; id < v.tokens.size(); ++id) {
      v.whole.insert(static_cast<std::int32_t>(id), v.tokens);
      if (v.tokens[id].size() > 2 && v.tokens[id].compare(0, 2, "##") == 0) v.suffix.insert(static_cast<std::int32_t>(id), v.tokens);
    }
    v.pad = special(v, "[PAD]", path);
    v.unk = special(v, "[UNK]", path);
    v.cls = special(v, "[CLS]", path);
    v.sep = special(v, "[SEP]", path);
    v.mask = special(v, "[MASK]", path);
    return v;
  }

  /// Id of a special token that must be present.
  static std::int64_t special(const Vocab& v, std::string_view name, const std::filesystem::path& path) {
    const auto id = v.whole.find(name, v.tokens);
    if (id < 0)
      throw FileError(examples::str("the WordPiece vocabulary '", path.string(), "' (", v.tokens.size(), " lines) has no ", name,
                                  " line. Use the vocab.txt of a BERT model, which lists [PAD] [UNK] [CLS] [SEP] [MASK]."));
    return id;
  }

  bool is_special(std::int64_t id) const {
    return id == vocab_->pad || id == vocab_->unk || id == vocab_->cls || id == vocab_->sep || id == vocab_->mask;
  }

  /// The CJK ideograph blocks of BertTokenizer._is_chinese_char.
  static bool is_cjk(char32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
           (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
  }

  /// Steps 1-3 for one character: _clean_text, _tokenize_chinese_chars, str.split separators.
  static Clean clean_class(char32_t cp) {
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
  static bool is_punctuation(char32_t cp) {
    if (cp < 0x80) return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
    return unicode::is_punctuation(unicode::category(cp));
  }

  /// Appends the piece ids of `text` (no special tokens).
  void append_ids(std::string_view text, std::vector<std::int64_t>& ids) const {
    Scratch s;
    for (std::size_t i = 0; i < text.size();) {
      const auto step = unicode::decode(text, i);
      i += step.len;
      if (!step.valid) continue;  // read as U+FFFD, which cleaning drops
      switch (clean_class(step.cp)) {
        case Clean::kDrop:
          break;
        case Clean::kSpace:
          flush_word(s, ids);
          break;
        case Clean::kCjk:
          flush_word(s, ids);
          s.word += step.cp;
          flush_word(s, ids);
          break;
        case Clean::kKeep:
          s.word += step.cp;
          break;
      }
    }
    flush_word(s, ids);
  }

  /// Steps 4-6 for the word in s.word, which it then clears.
  void flush_word(Scratch& s, std::vector<std::int64_t>& ids) const {
    if (s.word.empty()) return;
    s.lowered.clear();
    unicode::append_lower(s.word, s.lowered);
    s.normalized.clear();
    unicode::append_nfd(s.lowered, s.normalized);
    for (char32_t cp : s.normalized) {
      if (cp >= 0x300 && unicode::category(cp) == UTF8PROC_CATEGORY_MN) continue;  // accent
      const bool punct = is_punctuation(cp);
      if (punct) flush_piece(s, ids);
      unicode::append_utf8(s.piece, cp);
      s.offsets.push_back(static_cast<std::uint32_t>(s.piece.size()));
      if (punct) flush_piece(s, ids);
    }
    flush_piece(s, ids);
    s.word.clear();
  }

  /// Greedy longest-match-first WordPiece of s.piece, which it then clears.
  void flush_piece(Scratch& s, std::vector<std::int64_t>& ids) const {
    const std::size_t n = s.offsets.size() - 1;  // code points
    if (n == 0) return;
    const std::size_t mark = ids.size();
    if (n > kMaxInputCharsPerWord) {
      ids.push_back(vocab_->unk);
    } else {
      for (std::size_t start = 0; start < n;) {
        const Match m = longest_match(s, start);
        if (m.end == start) {  // no piece fits: the whole word is [UNK]
          ids.resize(mark);
          ids.push_back(vocab_->unk);
          break;
        }
        start = m.end;
        ids.push_back(m.id);
      }
    }
    s.piece.clear();
    s.offsets.resize(1);
  }

  /// A vocabulary entry found in a piece: where it ends (in code points) and its id.
  struct Match {
    std::size_t end;
    std::int64_t id;
  };

  /// The longest vocabulary entry of s.piece starting at code point `start` ("##"-prefixed
  /// when start > 0); end == start if there is none.
  Match longest_match(const Scratch& s, std::size_t start) const {
    const PieceTable& table = start == 0 ? vocab_->whole : vocab_->suffix;
    const std::size_t n = s.offsets.size() - 1;
    for (std::size_t end = std::min(n, start + table.longest()); end > start; --end) {
      const std::string_view sub(s.piece.data() + s.offsets[start], s.offsets[end] - s.offsets[start]);
      if (const auto id = table.find(sub, vocab_->tokens); id >= 0) return {end, id};
    }
    return {start, vocab_->unk};
  }

  std::shared_ptr<const Vocab> vocab_;
};

}  // namespace text

// BERT's vocab.txt read into the tables wordpiece.hpp looks pieces up in: one token per line,
// id = line number (as HF's load_vocab reads it; a trailing "\r" is also removed), and the ids
// of the special tokens [PAD] [UNK] [CLS] [SEP] [MASK], which every BERT vocabulary lists.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "errors.hpp"

namespace text::bert {

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

/// The loaded vocabulary, shared by copies of WordPieceTokenizer.
struct Vocab {
  std::vector<std::string> tokens;  // id -> token
  PieceTable whole{0, 0};           // token -> id (the start of a word)
  PieceTable suffix{0, 2};          // "x" -> id of "##x" (the rest of a word)
  std::int64_t pad = 0, unk = 0, cls = 0, sep = 0, mask = 0;
};

namespace detail {

/// Id of a special token that must be present.
inline std::int64_t special(const Vocab& v, std::string_view name, const std::filesystem::path& path) {
  const auto id = v.whole.find(name, v.tokens);
  if (id < 0)
    throw examples::FileError(
        examples::str("the WordPiece vocabulary '", path.string(), "' (", v.tokens.size(), " lines) has no ", name,
                      " line. Use the vocab.txt of a BERT model, which lists [PAD] [UNK] [CLS] [SEP] [MASK]."));
  return id;
}

}  // namespace detail

/// Reads vocab.txt and finds the special tokens. Throws examples::FileError if the file cannot
/// be read or lacks one of [PAD] [UNK] [CLS] [SEP] [MASK].
inline Vocab load_vocab(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw examples::FileError(
        examples::str("cannot open the WordPiece vocabulary '", path.string(), "': ", std::strerror(errno),
                      ". Pass the vocab.txt of an uncased BERT model (bert-base-uncased, distilbert-base-uncased)."));
  Vocab v;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    v.tokens.push_back(std::move(line));
  }
  if (v.tokens.size() > static_cast<std::size_t>(INT32_MAX))
    throw examples::FileError(
        examples::str("the WordPiece vocabulary '", path.string(), "' has too many lines (", v.tokens.size(), ")."));
  v.whole = PieceTable(v.tokens.size(), 0);
  v.suffix = PieceTable(v.tokens.size(), 2);
  for (std::size_t id = 0; id < v.tokens.size(); ++id) {
    v.whole.insert(static_cast<std::int32_t>(id), v.tokens);
    if (v.tokens[id].size() > 2 && v.tokens[id].compare(0, 2, "##") == 0) v.suffix.insert(static_cast<std::int32_t>(id), v.tokens);
  }
  v.pad = detail::special(v, "[PAD]", path);
  v.unk = detail::special(v, "[UNK]", path);
  v.cls = detail::special(v, "[CLS]", path);
  v.sep = detail::special(v, "[SEP]", path);
  v.mask = detail::special(v, "[MASK]", path);
  return v;
}

}  // namespace text::bert

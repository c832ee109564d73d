// GPT-2's BPE files read into the tables bpe.hpp encodes with: vocab.json (token -> id, ids
// 0..N-1) and merges.txt (one "a b" pair per line by rank, after a "#version" line).
//
// Both files spell tokens with GPT-2's bytes_to_unicode() alphabet, one visible character per
// byte; reading turns them back into raw bytes. Every symbol is then its vocabulary id and
// every merge a pair of ids, which gives the same result as encoder.py's string symbols, since
// ids and strings correspond one to one.
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "text/unicode.hpp"

namespace text::gpt2 {

/// Rank of a merge (kNoMerge: none) and the id of the symbol it makes.
struct Merge {
  std::uint32_t rank;
  std::int32_t merged;
};
inline constexpr std::uint32_t kNoMerge = 0xFFFFFFFF;

/// Open-addressing hash table (linear probing, at most half full) from a pair of ids to
/// their merge: one flat array, so a lookup touches one or two cache lines.
class MergeTable {
 public:
  explicit MergeTable(std::size_t entries = 0) {
    std::size_t n = 16;
    while (n < 2 * entries) n *= 2;
    slots_.assign(n, Slot{kEmpty, Merge{kNoMerge, -1}});
  }

  /// Sets the merge of (left, right); a later duplicate wins, as in encoder.py's dict.
  void insert(std::int32_t left, std::int32_t right, Merge merge) {
    const std::uint64_t key = key_of(left, right);
    std::size_t i = slot_of(key);
    while (slots_[i].key != kEmpty && slots_[i].key != key) i = next(i);
    slots_[i] = {key, merge};
  }

  /// The merge of (left, right); rank kNoMerge if there is none.
  Merge find(std::int32_t left, std::int32_t right) const {
    const std::uint64_t key = key_of(left, right);
    for (std::size_t i = slot_of(key); slots_[i].key != kEmpty; i = next(i))
      if (slots_[i].key == key) return slots_[i].merge;
    return {kNoMerge, -1};
  }

 private:
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};  // ids are below 2^31
  struct Slot {
    std::uint64_t key;
    Merge merge;
  };

  static std::uint64_t key_of(std::int32_t a, std::int32_t b) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }
  /// Mixes the packed pair into a well-spread slot index.
  std::size_t slot_of(std::uint64_t k) const noexcept {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDULL;
    k ^= k >> 33;
    return static_cast<std::size_t>(k) & (slots_.size() - 1);
  }
  std::size_t next(std::size_t i) const noexcept { return (i + 1) & (slots_.size() - 1); }

  std::vector<Slot> slots_;
};

/// The two files, read: what BpeTokenizer shares between its copies.
struct Model {
  std::vector<std::string> token_bytes;     // id -> raw bytes
  std::array<std::int32_t, 256> byte_id{};  // id of each single byte
  MergeTable merges;                        // (left id, right id) -> merge
  std::int64_t eos = 0;
};

/// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68
/// bytes for U+0100.. in byte order, so every byte has a visible character.
inline std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (unsigned b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? b : next++;
  }
  return table;
}

namespace detail {

/// Raw bytes of a vocab.json / merges.txt token spelled with bytes_to_unicode() characters.
inline std::string token_to_bytes(std::string_view token, const std::filesystem::path& file) {
  static const auto decoder = [] {
    std::array<int, 324> inverse;
    inverse.fill(-1);
    const auto table = bytes_to_unicode();
    for (unsigned b = 0; b < 256; ++b) inverse[table[b]] = static_cast<int>(b);
    return inverse;
  }();
  std::string out;
  for (std::size_t i = 0; i < token.size();) {
    const auto step = unicode::decode(token, i);
    i += step.len;
    if (!step.valid || step.cp >= decoder.size() || decoder[step.cp] < 0)
      throw examples::FileError(
          examples::str("'", file.string(), "': the token \"", token,
                        "\" is not spelled in GPT-2's byte-to-unicode alphabet. Pass GPT-2's vocab.json and merges.txt."));
    out += static_cast<char>(decoder[step.cp]);
  }
  return out;
}

/// Opens `path` for reading or throws a FileError that names it and `what` it should be.
inline std::ifstream open_file(const std::filesystem::path& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw examples::FileError(
        examples::str("cannot open the GPT-2 BPE ", what, " '", path.string(), "': ", std::strerror(errno),
                      ". Pass the vocab.json and merges.txt of GPT-2 (gpt2, distilgpt2)."));
  return in;
}

/// Reads vocab.json into `m` and returns token bytes -> id.
inline std::unordered_map<std::string, std::int32_t> load_vocab(const std::filesystem::path& path, Model& m) {
  auto in = open_file(path, "vocabulary");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw examples::FileError(
        examples::str("'", path.string(), "' is not valid JSON (", e.what(), "). Pass GPT-2's vocab.json."));
  }
  if (!j.is_object() || j.empty())
    throw examples::FileError(
        examples::str("'", path.string(), "' is not a JSON object of token -> id. Pass GPT-2's vocab.json."));
  std::unordered_map<std::string, std::int32_t> ids;
  m.token_bytes.assign(j.size(), std::string());
  std::vector<bool> seen(j.size(), false);
  for (const auto& [token, value] : j.items()) {
    const auto id = value.is_number_integer() ? value.get<std::int64_t>() : -1;
    if (id < 0 || static_cast<std::size_t>(id) >= j.size() || seen[static_cast<std::size_t>(id)])
      throw examples::FileError(
          examples::str("'", path.string(), "': the id of \"", token, "\" is ", value.dump(), "; ids must be 0..",
                        j.size() - 1, ", each once. Pass GPT-2's vocab.json."));
    seen[static_cast<std::size_t>(id)] = true;
    auto bytes = token_to_bytes(token, path);
    m.token_bytes[static_cast<std::size_t>(id)] = bytes;
    ids[std::move(bytes)] = static_cast<std::int32_t>(id);
  }
  return ids;
}

/// Id of `bytes` in `ids`, or a FileError naming the merges.txt line.
inline std::int32_t merge_part(const std::unordered_map<std::string, std::int32_t>& ids, const std::string& bytes,
                               std::string_view line, std::size_t line_no, const std::filesystem::path& path) {
  const auto it = ids.find(bytes);
  if (it == ids.end())
    throw examples::FileError(
        examples::str("'", path.string(), "' line ", line_no, " (\"", line,
                      "\") uses or makes a token that vocab.json lacks. Pass the merges.txt that belongs to this vocab.json."));
  return it->second;
}

/// Reads merges.txt into m.merges: rank = index among the pair lines.
inline void load_merges(const std::filesystem::path& path, const std::unordered_map<std::string, std::int32_t>& ids,
                        Model& m) {
  auto in = open_file(path, "merges file");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(std::move(line));
  m.merges = MergeTable(lines.size());
  std::uint32_t rank = 0;
  std::size_t line_no = 0;
  for (std::string& line : lines) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const auto space = line.find(' ');
    if (space == 0 || space == std::string::npos || space + 1 == line.size() || line.find(' ', space + 1) != std::string::npos)
      throw examples::FileError(
          examples::str("'", path.string(), "' line ", line_no, " (\"", line,
                        "\") is not two tokens separated by one space. Pass GPT-2's merges.txt."));
    const auto left = token_to_bytes(std::string_view(line).substr(0, space), path);
    const auto right = token_to_bytes(std::string_view(line).substr(space + 1), path);
    const Merge merge{rank++, merge_part(ids, left + right, line, line_no, path)};
    m.merges.insert(merge_part(ids, left, line, line_no, path), merge_part(ids, right, line, line_no, path), merge);
  }
}

}  // namespace detail

/// Reads vocab.json and merges.txt into a Model. Throws examples::FileError if a file cannot
/// be read or does not fit the other.
inline Model load_model(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt) {
  Model m;
  const auto ids = detail::load_vocab(vocab_json, m);
  for (unsigned b = 0; b < 256; ++b) {
    const auto it = ids.find(std::string(1, static_cast<char>(b)));
    if (it == ids.end())
      throw examples::FileError(
          examples::str("'", vocab_json.string(), "' has no token for byte ", b,
                        "; a byte-level BPE vocabulary has all 256. Pass GPT-2's vocab.json."));
    m.byte_id[b] = it->second;
  }
  const auto eos = ids.find("<|endoftext|>");
  if (eos == ids.end())
    throw examples::FileError(
        examples::str("'", vocab_json.string(), "' has no <|endoftext|> token. Pass GPT-2's vocab.json."));
  m.eos = eos->second;
  detail::load_merges(merges_txt, ids, m);
  return m;
}

}  // namespace text::gpt2

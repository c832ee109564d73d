// GPT-2 byte-level BPE tokenizer: the behaviour of OpenAI's gpt-2 src/encoder.py (and HF's
// GPT2Tokenizer) with vocab.json + merges.txt.
//
// Pipeline, as in encoder.py:
//   1. pre-tokenize with
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      implemented as a hand-written scanner (\s = the Unicode White_Space property, as in
//      Python's `regex` module; \p{L}, \p{N} from utf8proc's general categories);
//   2. BPE on the UTF-8 bytes of each pre-token: repeatedly merge every occurrence (left to
//      right) of the adjacent pair with the lowest merges.txt rank, until no pair has a rank;
//   3. the resulting symbols' ids from vocab.json. No special tokens are added, and
//      "<|endoftext|>" inside the text is ordinary text.
// Internally every symbol is its vocabulary id and every merge a pair of ids, which gives the
// same result as encoder.py's string symbols, since ids and strings correspond one to one.
//
// Invalid UTF-8 (which Python's str never holds): GPT-2 BPE works on bytes, so nothing is lost.
// The pre-tokenizer reads each ill-formed sequence (its maximal subpart; see unicode.hpp) as one
// character of the "other" class [^\s\p{L}\p{N}], so it joins the neighbouring punctuation run,
// and BPE encodes its bytes like any others. decode() returns bytes, so
// decode(encode(x)) == x for every byte string x.
//
// Thread safety: encode() may run on many threads; they share a cache of BPE results per
// pre-token behind a mutex (one lock per call). Copies share the model and the cache.
#pragma once

#include <lora/error.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "errors.hpp"
#include "text/unicode.hpp"

namespace text {

using examples::DataError;
using examples::FileError;

class BpeTokenizer {
 public:
  /// Loads GPT-2's vocab.json (token -> id, ids 0..N-1) and merges.txt (one "a b" pair per line
  /// by rank, after a "#version" line). Throws examples::FileError if a file cannot be read or
  /// does not fit the other.
  BpeTokenizer(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt)
      : model_(std::make_shared<const Model>(load(vocab_json, merges_txt))), cache_(std::make_shared<Cache>()) {}

  /// Token ids of `text` (any bytes), without special tokens.
  std::vector<std::int64_t> encode(std::string_view text) const {
    std::vector<std::int64_t> ids;
    ids.reserve(text.size() / 3);
    std::lock_guard<std::mutex> lock(cache_->mutex);
    for_each_pre_token(text, [&](std::string_view piece) { append_piece(piece, ids); });
    return ids;
  }

  /// The bytes `ids` stand for. Throws examples::DataError for an id outside [0, vocab_size()).
  std::string decode(const std::vector<std::int64_t>& ids) const {
    std::string out;
    for (auto id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= model_->token_bytes.size())
        throw DataError(examples::str("BpeTokenizer::decode: id ", id, " is outside the vocabulary [0, ",
                                    model_->token_bytes.size(), ")"));
      out += model_->token_bytes[static_cast<std::size_t>(id)];
    }
    return out;
  }

  /// The pre-tokens of `text` (step 1), as views into it.
  static std::vector<std::string_view> pre_tokenize(std::string_view text) {
    std::vector<std::string_view> out;
    for_each_pre_token(text, [&](std::string_view piece) { out.push_back(piece); });
    return out;
  }

  /// Id of "<|endoftext|>" (50256 for GPT-2).
  std::int64_t eos_id() const { return model_->eos; }
  /// Number of ids (50257 for GPT-2).
  std::size_t vocab_size() const { return model_->token_bytes.size(); }

 private:
  /// Rank of a merge (kNoMerge: none) and the id of the symbol it makes.
  struct Merge {
    std::uint32_t rank;
    std::int32_t merged;
  };
  static constexpr std::uint32_t kNoMerge = 0xFFFFFFFF;

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

  struct Model {
    std::vector<std::string> token_bytes;     // id -> raw bytes
    std::array<std::int32_t, 256> byte_id{};  // id of each single byte
    MergeTable merges;                        // (left id, right id) -> merge
    std::int64_t eos = 0;
  };

  /// BPE results per pre-token: spans of one id pool, and scratch space for encode().
  struct Cache {
    struct Span {
      std::uint32_t offset, size;
    };
    std::mutex mutex;
    std::unordered_map<std::string, Span> spans;
    std::vector<std::int32_t> pool;
    std::string key;                  // the pre-token being looked up (reused, no allocation)
    std::vector<std::int32_t> word;   // its symbols during BPE
    std::vector<std::uint32_t> ranks; // ranks[i]: merge rank of (word[i], word[i + 1])
  };

  static constexpr std::size_t kCacheEntries = 1 << 18;  // cleared when full, bounding memory
  static constexpr std::size_t kCacheMaxBytes = 256;      // longer pre-tokens are not cached

  /// Character classes of the pre-tokenization pattern.
  enum class Cls : unsigned char { kLetter, kNumber, kSpace, kOther };

  /// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68
  /// bytes for U+0100.. in byte order, so every byte has a visible character.
  static std::array<char32_t, 256> bytes_to_unicode() {
    std::array<char32_t, 256> table{};
    char32_t next = 256;
    for (unsigned b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      table[b] = printable ? b : next++;
    }
    return table;
  }

  /// Raw bytes of a vocab.json / merges.txt token spelled with bytes_to_unicode() characters.
  static std::string token_to_bytes(std::string_view token, const std::filesystem::path& file) {
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
        throw FileError(examples::str("'", file.string(), "': the token \"", token,
                                    "\" is not spelled in GPT-2's byte-to-unicode alphabet. Pass GPT-2's vocab.json and merges.txt."));
      out += static_cast<char>(decoder[step.cp]);
    }
    return out;
  }

  /// Opens `path` for reading or throws a FileError that names it and `what` it should be.
  static std::ifstream open(const std::filesystem::path& path, std::string_view what) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
      throw FileError(examples::str("cannot open the GPT-2 BPE ", what, " '", path.string(), "': ", std::strerror(errno),
                                  ". Pass the vocab.json and merges.txt of GPT-2 (gpt2, distilgpt2)."));
    return in;
  }

  /// Reads vocab.json into `m` and returns token bytes -> id.
  static std::unordered_map<std::string, std::int32_t> load_vocab(const std::filesystem::path& path, Model& m) {
    auto in = open(path, "vocabulary");
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw FileError(examples::str("'", path.string(), "' is not valid JSON (", e.what(), "). Pass GPT-2's vocab.json."));
    }
    if (!j.is_object() || j.empty())
      throw FileError(examples::str("'", path.string(), "' is not a JSON object of token -> id. Pass GPT-2's vocab.json."));
    std::unordered_map<std::string, std::int32_t> ids;
    m.token_bytes.assign(j.size(), std::string());
    std::vector<bool> seen(j.size(), false);
    for (const auto& [token, value] : j.items()) {
      const auto id = value.is_number_integer() ? value.get<std::int64_t>() : -1;
      if (id < 0 || static_cast<std::size_t>(id) >= j.size() || seen[static_cast<std::size_t>(id)])
        throw FileError(examples::str("'", path.string(), "': the id of \"", token, "\" is ", value.dump(), "; ids must be 0..",
                                    j.size() - 1, ", each once. Pass GPT-2's vocab.json."));
      seen[static_cast<std::size_t>(id)] = true;
      auto bytes = token_to_bytes(token, path);
      m.token_bytes[static_cast<std::size_t>(id)] = bytes;
      ids[std::move(bytes)] = static_cast<std::int32_t>(id);
    }
    return ids;
  }

  /// Id of `bytes` in `ids`, or a FileError naming the merges.txt line.
  static std::int32_t merge_part(const std::unordered_map<std::string, std::int32_t>& ids, const std::string& bytes,
                                 std::string_view line, std::size_t line_no, const std::filesystem::path& path) {
    const auto it = ids.find(bytes);
    if (it == ids.end())
      throw FileError(examples::str("'", path.string(), "' line ", line_no, " (\"", line,
                                  "\") uses or makes a token that vocab.json lacks. Pass the merges.txt that belongs to this vocab.json."));
    return it->second;
  }

  /// Reads merges.txt into m.merges: rank = index among the pair lines.
  static void load_merges(const std::filesystem::path& path, const std::unordered_map<std::string, std::int32_t>& ids,
                          Model& m) {
    auto in = open(path, "merges file");
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
        throw FileError(examples::str("'", path.string(), "' line ", line_no, " (\"", line,
                                    "\") is not two tokens separated by one space. Pass GPT-2's merges.txt."));
      const auto left = token_to_bytes(std::string_view(line).substr(0, space), path);
      const auto right = token_to_bytes(std::string_view(line).substr(space + 1), path);
      const Merge merge{rank++, merge_part(ids, left + right, line, line_no, path)};
      m.merges.insert(merge_part(ids, left, line, line_no, path), merge_part(ids, right, line, line_no, path), merge);
    }
  }

  /// Builds the model from the two files.
  static Model load(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt) {
    Model m;
    const auto ids = load_vocab(vocab_json, m);
    for (unsigned b = 0; b < 256; ++b) {
      const auto it = ids.find(std::string(1, static_cast<char>(b)));
      if (it == ids.end())
        throw FileError(examples::str("'", vocab_json.string(), "' has no token for byte ", b,
                                    "; a byte-level BPE vocabulary has all 256. Pass GPT-2's vocab.json."));
      m.byte_id[b] = it->second;
    }
    const auto eos = ids.find("<|endoftext|>");
    if (eos == ids.end())
      throw FileError(examples::str("'", vocab_json.string(), "' has no <|endoftext|> token. Pass GPT-2's vocab.json."));
    m.eos = eos->second;
    load_merges(merges_txt, ids, m);
    return m;
  }

  /// Class of one decoded character; an invalid byte sequence is "other".
  static Cls classify(const unicode::Step& st) {
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
  static std::size_t contraction_length(std::string_view s, std::size_t i) {
    const auto rest = s.substr(i + 1);
    if (rest.empty()) return 0;
    if (rest[0] == 's' || rest[0] == 't' || rest[0] == 'm' || rest[0] == 'd') return 2;
    if (rest.size() >= 2 && (rest.compare(0, 2, "re") == 0 || rest.compare(0, 2, "ve") == 0 || rest.compare(0, 2, "ll") == 0)) return 3;
    return 0;
  }

  /// End of the run of class-`cls` characters starting at s[i].
  static std::size_t run_end(std::string_view s, std::size_t i, Cls cls) {
    while (i < s.size()) {
      const auto st = unicode::decode(s, i);
      if (classify(st) != cls) break;
      i += st.len;
    }
    return i;
  }

  /// End of the pre-token starting at s[i]: the pattern's alternatives, tried in order.
  static std::size_t pre_token_end(std::string_view s, std::size_t i) {
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

  /// Calls f(pre-token) for each pre-token of `text`, in order.
  template <typename F>
  static void for_each_pre_token(std::string_view text, F&& f) {
    for (std::size_t i = 0; i < text.size();) {
      const std::size_t end = pre_token_end(text, i);
      f(text.substr(i, end - i));
      i = end;
    }
  }

  /// Step 2: merges the symbols of `word` (ids) in place, lowest rank first. `ranks` caches
  /// the rank of each adjacent pair, so a pass looks up only the pairs its merges create.
  void bpe(std::vector<std::int32_t>& word, std::vector<std::uint32_t>& ranks) const {
    const MergeTable& merges = model_->merges;
    ranks.resize(word.size() > 0 ? word.size() - 1 : 0);
    for (std::size_t i = 0; i + 1 < word.size(); ++i) ranks[i] = merges.find(word[i], word[i + 1]).rank;
    while (word.size() > 1) {
      const std::size_t first = static_cast<std::size_t>(std::min_element(ranks.begin(), ranks.end()) - ranks.begin());
      if (ranks[first] == kNoMerge) return;
      const std::int32_t left = word[first], right = word[first + 1];
      const std::int32_t merged = merges.find(left, right).merged;
      // Merge every (left, right) from `first` on, left to right; ranks[out - 1] is set once
      // word[out] is known: looked up next to a new symbol, else kept from the old pair.
      std::size_t out = first;
      bool prev_hit = false;
      for (std::size_t i = first; i < word.size(); ++out) {
        const bool hit = i + 1 < word.size() && word[i] == left && word[i + 1] == right;
        const std::int32_t symbol = hit ? merged : word[i];
        if (out > 0) ranks[out - 1] = (hit || prev_hit) ? merges.find(word[out - 1], symbol).rank : ranks[i - 1];
        word[out] = symbol;
        prev_hit = hit;
        i += hit ? 2 : 1;
      }
      word.resize(out);
      ranks.resize(out - 1);
    }
  }

  /// Appends the ids of one pre-token, from the cache or by BPE. Needs cache_->mutex.
  void append_piece(std::string_view piece, std::vector<std::int64_t>& ids) const {
    Cache& c = *cache_;
    const bool cacheable = piece.size() <= kCacheMaxBytes;
    if (cacheable) {
      c.key.assign(piece);
      if (const auto it = c.spans.find(c.key); it != c.spans.end()) {
        const auto* first = c.pool.data() + it->second.offset;
        ids.insert(ids.end(), first, first + it->second.size);
        return;
      }
    }
    c.word.clear();
    for (char b : piece) c.word.push_back(model_->byte_id[static_cast<unsigned char>(b)]);
    bpe(c.word, c.ranks);
    ids.insert(ids.end(), c.word.begin(), c.word.end());
    if (!cacheable) return;
    if (c.spans.size() >= kCacheEntries) c.spans.clear(), c.pool.clear();
    c.spans.emplace(c.key, Cache::Span{static_cast<std::uint32_t>(c.pool.size()), static_cast<std::uint32_t>(c.word.size())});
    c.pool.insert(c.pool.end(), c.word.begin(), c.word.end());
  }

  std::shared_ptr<const Model> model_;
  std::shared_ptr<Cache> cache_;
};

}  // namespace text

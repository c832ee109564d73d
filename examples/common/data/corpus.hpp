// Pretraining text -> token blocks, as /work/shared/pretraining.md describes the recipes of the
// shared small bases (docs/pretraining.md: how pretrain uses it).
//
// 1. Sources. A source is a text file read line by line, or an AG-News CSV (.csv) read row by
//    row (title + " " + description, data/agnews.hpp), optionally limited to a 1-based inclusive
//    range of lines or rows: "FILE:FIRST-LAST" (either end may be left out: "FILE:10001-").
// 2. Clean-up of each line or row (CleanupRules): trailing "\n" removed; lines empty after
//    trimming white space dropped; lines that, trimmed, start and end with '=' (WikiText
//    headings " = Title = ") dropped; WikiText's " @-@ ", " @,@ ", " @.@ " undone to "-", ",", ".".
// 3. Token stream. Each kept text is encoded on its own (no special tokens) and appended to one
//    stream, in source order, followed by the separator: nothing (DistilBERT's recipe), the
//    end-of-text id (GPT-2's recipe: <|endoftext|> after each row), or the tokens of "\n".
// 4. Blocks. The stream is cut into consecutive pieces; the rest too short for a piece is
//    dropped. With framing (DistilBERT) each piece has block_size - 2 tokens and becomes
//    [CLS] piece [SEP]; without (GPT-2) each piece is a block of block_size tokens.
// 5. Held-out blocks: the first or the last N blocks, never trained on.
// 6. Training order: the other blocks in a seeded random order, reshuffled (with a new order)
//    each time they are exhausted. Sample g of the run (g = step x batch + i, from 0) is block
//    order(g / n)[g % n] of epoch g / n: a pure function of (seed, g), so a resumed run sees
//    the blocks an uninterrupted one would, and a batch may straddle two epochs.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "data/agnews.hpp"
#include "data/batching.hpp"
#include "data/wikitext.hpp"
#include "errors.hpp"

namespace data {

/// One text file of the corpus and the range of its lines (or CSV rows) to read.
struct TextSource {
  std::string spec;             ///< as given: "corpus/x.txt" or "agnews/train.csv:10001-14995"
  std::filesystem::path path;   ///< the file, resolved against the data folder
  std::int64_t first = 1;       ///< first line or row, from 1
  std::int64_t last = 0;        ///< last line or row, inclusive; 0: to the end
  bool csv = false;             ///< an AG-News CSV (rows), else a text file (lines)
};

/// "FILE" or "FILE:FIRST-LAST" (either number may be left out) -> a TextSource; a relative FILE
/// is taken relative to `base`. Throws examples::UsageError for a malformed range.
inline TextSource parse_text_source(const std::string& spec, const std::filesystem::path& base) {
  TextSource s;
  s.spec = spec;
  std::string file = spec;
  const auto colon = spec.rfind(':');
  if (colon != std::string::npos) {
    const std::string range = spec.substr(colon + 1);
    const auto dash = range.find('-');
    const bool digits_only = !range.empty() && range.find_first_not_of("0123456789-") == std::string::npos;
    if (digits_only && dash != std::string::npos && range.find('-', dash + 1) == std::string::npos) {
      const std::string a = range.substr(0, dash), b = range.substr(dash + 1);
      if (a.size() > 15 || b.size() > 15)
        throw examples::UsageError(examples::str("--text '", spec, "': the range ", range, " is out of bounds."));
      if (!a.empty()) s.first = std::stoll(a);
      if (!b.empty()) s.last = std::stoll(b);
      if (s.first < 1 || (s.last != 0 && s.last < s.first))
        throw examples::UsageError(examples::str(
            "--text '", spec, "': the range ", range, " is empty or starts before line 1. Give FILE:FIRST-LAST with ",
            "1 <= FIRST <= LAST (1-based, inclusive), e.g. agnews/train_subset_14995.csv:10001-14995."));
      file = spec.substr(0, colon);
    }
  }
  if (file.empty())
    throw examples::UsageError(examples::str("--text '", spec, "': no file named. Give FILE or FILE:FIRST-LAST."));
  const std::filesystem::path p(file);
  s.path = p.is_absolute() ? p : base / p;
  s.csv = s.path.extension() == ".csv";
  return s;
}

/// The clean-up applied to every line or row (rule 2).
struct CleanupRules {
  bool drop_blank = true;             ///< lines empty after trimming
  bool drop_headings = true;          ///< lines that, trimmed, start and end with '='
  bool undo_wikitext_escapes = true;  ///< " @-@ " -> "-", " @,@ " -> ",", " @.@ " -> "."
};

namespace detail {

inline void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
}

}  // namespace detail

/// Applies `rules` to one line (its final "\n", if any, is removed first). Returns false when
/// the line is dropped.
inline bool clean_line(std::string& line, const CleanupRules& rules) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  const auto first = line.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return !rules.drop_blank;
  const auto last = line.find_last_not_of(" \t\r\n");
  if (rules.drop_headings && line[first] == '=' && line[last] == '=') return false;
  if (rules.undo_wikitext_escapes) {
    detail::replace_all(line, " @-@ ", "-");
    detail::replace_all(line, " @,@ ", ",");
    detail::replace_all(line, " @.@ ", ".");
  }
  return true;
}

/// The texts of `source` (its lines, or its CSV rows as title + " " + description), in order,
/// limited to its range and cleaned by `rules`. Throws examples::FileError when the file cannot
/// be read or holds fewer lines than the range asks for.
inline std::vector<std::string> read_texts(const TextSource& source, const CleanupRules& rules) {
  if (!std::filesystem::is_regular_file(source.path))
    throw examples::FileError(examples::str("--text '", source.spec, "': ", source.path.string(),
                                            " does not exist. Pass --shared (or --data-dir) pointing at the folder "
                                            "that holds it, or fetch the corpus with scripts/fetch-assets.sh."));
  std::vector<std::string> all;
  if (source.csv) {
    for (auto& row : read_agnews(source.path)) all.push_back(std::move(row.text));
  } else {
    all = read_lines(source.path);
  }
  const auto n = static_cast<std::int64_t>(all.size());
  const std::int64_t last = source.last == 0 ? n : source.last;
  if (last > n)
    throw examples::FileError(examples::str("--text '", source.spec, "': asks for ", source.csv ? "rows " : "lines ",
                                            source.first, "-", last, " but ", source.path.string(), " has ", n,
                                            ". Lower the range's end (or leave it out: FILE:FIRST-)."));
  std::vector<std::string> out;
  for (std::int64_t i = source.first; i <= last; ++i) {
    std::string& text = all[static_cast<std::size_t>(i - 1)];
    if (clean_line(text, rules)) out.push_back(std::move(text));
  }
  return out;
}

/// What follows each text in the token stream (rule 3).
enum class Separator {
  none,     ///< nothing: texts run into each other (DistilBERT's recipe)
  eos,      ///< the end-of-text id (GPT-2's recipe)
  newline,  ///< the tokens of "\n"
};

/// The token stream of a corpus, and what it came from.
struct TokenStream {
  std::vector<std::int64_t> ids;
  std::int64_t texts = 0;  ///< lines or rows kept
};

/// Rule 3 over every source, in order. `eos_id` is used with Separator::eos.
inline TokenStream token_stream(const std::vector<TextSource>& sources, const CleanupRules& rules,
                                const Tokenize& tokenize, Separator separator, std::int64_t eos_id = -1) {
  if (!tokenize) throw examples::DataError("token_stream: no tokenizer given");
  if (separator == Separator::eos && eos_id < 0)
    throw examples::DataError("token_stream: Separator::eos needs the tokenizer's end-of-text id");
  const std::vector<std::int64_t> newline = separator == Separator::newline ? tokenize("\n") : std::vector<std::int64_t>{};
  TokenStream s;
  for (const auto& source : sources) {
    for (const auto& text : read_texts(source, rules)) {
      const auto ids = tokenize(text);
      s.ids.insert(s.ids.end(), ids.begin(), ids.end());
      if (separator == Separator::eos) s.ids.push_back(eos_id);
      if (separator == Separator::newline) s.ids.insert(s.ids.end(), newline.begin(), newline.end());
      ++s.texts;
    }
  }
  return s;
}

/// Equal-length blocks of token ids, row-major: block i is ids[i * size, (i + 1) * size).
struct Blocks {
  std::int64_t size = 0;  ///< tokens per block
  std::vector<std::int64_t> ids;

  std::int64_t count() const { return size > 0 ? static_cast<std::int64_t>(ids.size()) / size : 0; }
  const std::int64_t* block(std::int64_t i) const { return ids.data() + i * size; }
  void append(const std::int64_t* block_ids) { ids.insert(ids.end(), block_ids, block_ids + size); }
};

/// Rule 4: blocks of `block_size` tokens; with cls_id and sep_id >= 0 each holds block_size - 2
/// stream tokens between them. The rest of the stream too short for a block is dropped.
inline Blocks cut_blocks(const std::vector<std::int64_t>& stream, std::int64_t block_size, std::int64_t cls_id = -1,
                          std::int64_t sep_id = -1) {
  const bool framed = cls_id >= 0 && sep_id >= 0;
  const std::int64_t piece = block_size - (framed ? 2 : 0);
  if (piece < 1)
    throw examples::UsageError(examples::str("--block-size ", block_size, " leaves no room for text",
                                             framed ? " between [CLS] and [SEP]" : "", "; give at least ",
                                             framed ? 3 : 2, "."));
  Blocks b;
  b.size = block_size;
  const auto n = static_cast<std::int64_t>(stream.size()) / piece;
  b.ids.reserve(static_cast<std::size_t>(n * block_size));
  for (std::int64_t i = 0; i < n; ++i) {
    if (framed) b.ids.push_back(cls_id);
    b.ids.insert(b.ids.end(), stream.begin() + i * piece, stream.begin() + (i + 1) * piece);
    if (framed) b.ids.push_back(sep_id);
  }
  return b;
}

/// Blocks split into those trained on and those held out (rule 5).
struct BlockSplit {
  Blocks train, held_out;
};

/// The first (`at_end` false) or last `held_out` blocks held out, the rest for training. Throws
/// examples::DataError unless at least one block is left for training.
inline BlockSplit split_held_out(const Blocks& all, std::int64_t held_out, bool at_end) {
  const auto n = all.count();
  if (held_out < 0 || held_out >= n)
    throw examples::DataError(examples::str("--held-out ", held_out, " leaves no block to train on: the text gives ", n,
                                            " blocks of ", all.size, " tokens. Give more text (--text) or hold out "
                                            "fewer blocks (at most ", std::max<std::int64_t>(n - 1, 0), ")."));
  BlockSplit s;
  s.train.size = s.held_out.size = all.size;
  const std::int64_t first_held = at_end ? n - held_out : 0;
  for (std::int64_t i = 0; i < n; ++i) (i >= first_held && i < first_held + held_out ? s.held_out : s.train).append(all.block(i));
  return s;
}

/// SplitMix64's step: a bijection of 64-bit values that spreads every bit, used to derive
/// independent seeds from (seed, index) pairs.
inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// A seed for stream `tag` at `index` of a run seeded with `seed`: different tags and indices
/// give unrelated seeds.
inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t tag, std::uint64_t index) {
  return splitmix64(splitmix64(splitmix64(seed) ^ tag) ^ index);
}

/// Rule 6: which training block sample g is. Keeps the permutation of the current epoch.
class BlockOrder {
 public:
  static constexpr std::uint64_t kTag = 0x6f72646572ULL;  // "order"

  BlockOrder(std::int64_t blocks, std::uint64_t seed) : n_(blocks), seed_(seed) {
    if (blocks < 1) throw examples::DataError("BlockOrder: no block to train on");
  }

  std::int64_t blocks() const { return n_; }
  /// The epoch of sample g (from 0) and its place in that epoch's order.
  std::int64_t epoch_of(std::uint64_t g) const { return static_cast<std::int64_t>(g / static_cast<std::uint64_t>(n_)); }
  std::int64_t position_of(std::uint64_t g) const { return static_cast<std::int64_t>(g % static_cast<std::uint64_t>(n_)); }

  /// The training block of sample g.
  std::int64_t at(std::uint64_t g) {
    const auto epoch = epoch_of(g);
    if (epoch != epoch_) {
      order_ = permutation(static_cast<std::size_t>(n_), derive_seed(seed_, kTag, static_cast<std::uint64_t>(epoch)));
      epoch_ = epoch;
    }
    return static_cast<std::int64_t>(order_[static_cast<std::size_t>(position_of(g))]);
  }

 private:
  std::int64_t n_;
  std::uint64_t seed_;
  std::int64_t epoch_ = -1;
  std::vector<std::size_t> order_;
};

/// FNV-1a (64-bit) of the ids, as 16 hex digits: a fingerprint of a token stream, recorded with a
/// checkpoint so that a resumed run can tell that its text changed.
inline std::string fingerprint(const std::vector<std::int64_t>& ids) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (const auto id : ids) {
    auto v = static_cast<std::uint64_t>(id);
    for (int i = 0; i < 8; ++i, v >>= 8) {
      h ^= v & 0xff;
      h *= 0x100000001b3ULL;
    }
  }
  static const char* hex = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) out[static_cast<std::size_t>(i)] = hex[h & 0xf];
  return out;
}

}  // namespace data

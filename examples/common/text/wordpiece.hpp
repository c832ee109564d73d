// BERT uncased WordPiece tokenizer: the behaviour of Hugging Face's BertTokenizer
// (tokenization_bert.py) with do_lower_case=True, tokenize_chinese_chars=True,
// strip_accents=None (so accents are stripped) and max_input_chars_per_word=100.
//
// Pipeline, as in BasicTokenizer + WordpieceTokenizer:
//   1-5. BasicTokenizer (bert_basic_tokenizer.hpp): cleaning (which drops invalid UTF-8),
//        CJK spacing, whitespace split, lowercasing, accent stripping, punctuation split;
//   6.   greedy longest-match-first WordPiece with "##" continuations against vocab.txt
//        (read by bert_vocab.hpp); a piece of more than 100 code points, or one the
//        vocabulary cannot cover, becomes [UNK].
//
// Special-token strings in the text ("[SEP]") are plain text here (split into "[", "sep", "]"),
// as with HF's split_special_tokens=True: input text cannot inject control tokens.
//
// Thread safety: a tokenizer is immutable after loading; encode() and friends may run on many
// threads at once. Copies share the vocabulary.
#pragma once

#include <lora/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "errors.hpp"
#include "text/bert_basic_tokenizer.hpp"
#include "text/bert_vocab.hpp"

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
      : vocab_(std::make_shared<const bert::Vocab>(bert::load_vocab(vocab_file))) {}

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
  bool is_special(std::int64_t id) const {
    return id == vocab_->pad || id == vocab_->unk || id == vocab_->cls || id == vocab_->sep || id == vocab_->mask;
  }

  /// Appends the piece ids of `text` (no special tokens).
  void append_ids(std::string_view text, std::vector<std::int64_t>& ids) const {
    bert::basic_tokenize(text, [&](const bert::Piece& piece) { append_piece_ids(piece, ids); });
  }

  /// Step 6: greedy longest-match-first WordPiece of one piece.
  void append_piece_ids(const bert::Piece& piece, std::vector<std::int64_t>& ids) const {
    const std::size_t n = piece.size();  // code points
    const std::size_t mark = ids.size();
    if (n > kMaxInputCharsPerWord) {
      ids.push_back(vocab_->unk);
      return;
    }
    for (std::size_t start = 0; start < n;) {
      const Match m = longest_match(piece, start);
      if (m.end == start) {  // no piece fits: the whole word is [UNK]
        ids.resize(mark);
        ids.push_back(vocab_->unk);
        return;
      }
      start = m.end;
      ids.push_back(m.id);
    }
  }

  /// A vocabulary entry found in a piece: where it ends (in code points) and its id.
  struct Match {
    std::size_t end;
    std::int64_t id;
  };

  /// The longest vocabulary entry of `piece` starting at code point `start` ("##"-prefixed
  /// when start > 0); end == start if there is none.
  Match longest_match(const bert::Piece& piece, std::size_t start) const {
    const bert::PieceTable& table = start == 0 ? vocab_->whole : vocab_->suffix;
    const std::size_t n = piece.size();
    for (std::size_t end = std::min(n, start + table.longest()); end > start; --end) {
      const std::string_view sub(piece.utf8.data() + piece.offsets[start], piece.offsets[end] - piece.offsets[start]);
      if (const auto id = table.find(sub, vocab_->tokens); id >= 0) return {end, id};
    }
    return {start, vocab_->unk};
  }

  std::shared_ptr<const bert::Vocab> vocab_;
};

}  // namespace text

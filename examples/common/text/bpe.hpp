// GPT-2 byte-level BPE tokenizer: the behaviour of OpenAI's gpt-2 src/encoder.py (and HF's
// GPT2Tokenizer) with vocab.json + merges.txt.
//
// Pipeline, as in encoder.py:
//   1. pre-tokenize with GPT-2's pattern (gpt2_pretokenizer.hpp);
//   2. BPE on the UTF-8 bytes of each pre-token: repeatedly merge every occurrence (left to
//      right) of the adjacent pair with the lowest merges.txt rank, until no pair has a rank;
//   3. the resulting symbols' ids from vocab.json. No special tokens are added, and
//      "<|endoftext|>" inside the text is ordinary text.
// Reading the two files, and why symbols are ids here: gpt2_vocab.hpp.
//
// Invalid UTF-8 (which Python's str never holds): GPT-2 BPE works on bytes, so nothing is lost.
// The pre-tokenizer puts each ill-formed sequence in a pre-token like any other character, and
// BPE encodes its bytes like any others. decode() returns bytes, so decode(encode(x)) == x for
// every byte string x.
//
// Thread safety: encode() may run on many threads; they share a cache of BPE results per
// pre-token behind a mutex (one lock per call). Copies share the model and the cache.
#pragma once

#include <lora/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "errors.hpp"
#include "text/gpt2_pretokenizer.hpp"
#include "text/gpt2_vocab.hpp"

namespace text {

using examples::DataError;
using examples::FileError;

class BpeTokenizer {
 public:
  /// Loads GPT-2's vocab.json (token -> id, ids 0..N-1) and merges.txt (one "a b" pair per line
  /// by rank, after a "#version" line). Throws examples::FileError if a file cannot be read or
  /// does not fit the other.
  BpeTokenizer(const std::filesystem::path& vocab_json, const std::filesystem::path& merges_txt)
      : model_(std::make_shared<const gpt2::Model>(gpt2::load_model(vocab_json, merges_txt))),
        cache_(std::make_shared<Cache>()) {}

  /// Token ids of `text` (any bytes), without special tokens.
  std::vector<std::int64_t> encode(std::string_view text) const {
    std::vector<std::int64_t> ids;
    ids.reserve(text.size() / 3);
    std::lock_guard<std::mutex> lock(cache_->mutex);
    gpt2::for_each_pre_token(text, [&](std::string_view piece) { append_piece(piece, ids); });
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
    gpt2::for_each_pre_token(text, [&](std::string_view piece) { out.push_back(piece); });
    return out;
  }

  /// Id of "<|endoftext|>" (50256 for GPT-2).
  std::int64_t eos_id() const { return model_->eos; }
  /// Number of ids (50257 for GPT-2).
  std::size_t vocab_size() const { return model_->token_bytes.size(); }

 private:
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

  /// Step 2: merges the symbols of `word` (ids) in place, lowest rank first. `ranks` caches
  /// the rank of each adjacent pair, so a pass looks up only the pairs its merges create.
  void bpe(std::vector<std::int32_t>& word, std::vector<std::uint32_t>& ranks) const {
    const gpt2::MergeTable& merges = model_->merges;
    ranks.resize(word.size() > 0 ? word.size() - 1 : 0);
    for (std::size_t i = 0; i + 1 < word.size(); ++i) ranks[i] = merges.find(word[i], word[i + 1]).rank;
    while (word.size() > 1) {
      const std::size_t first = static_cast<std::size_t>(std::min_element(ranks.begin(), ranks.end()) - ranks.begin());
      if (ranks[first] == gpt2::kNoMerge) return;
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

  std::shared_ptr<const gpt2::Model> model_;
  std::shared_ptr<Cache> cache_;
};

}  // namespace text

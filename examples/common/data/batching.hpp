// Deterministic shuffling and batching of token-id sequences.
//
// plan_batches() decides which examples go together and in what order; collate_classification()
// and collate_lm() turn one planned batch into tensors:
//   input_ids      int64 (B, T), right-padded with pad_id;
//   attention_mask int64 or bool (B, T), 1 on real tokens, 0 on padding;
//   labels         int64 (B) for classification, or (B, T) for causal LM: the input ids
//                  themselves (the model shifts them), -100 on padding.
// T is the longest (truncated) sequence of the batch (Padding::Dynamic), or max_len for every
// batch (Padding::Fixed, as the seed study padded to 512). Sequences longer than max_len are
// truncated to their first max_len ids (keep_last: the first max_len - 1 and the last one).
//
// Length bucketing (bucket_batches = K > 0): the shuffled examples are cut into chunks of
// K * batch_size, each chunk is sorted by length (longest first, ties in shuffled order) and
// cut into batches, then the order of all batches is shuffled. Batches then hold similar
// lengths, so dynamic padding wastes little, while every epoch still sees new batches.
//
// Every random choice comes from a std::mt19937_64 through uniform_below() and shuffle()
// below, whose algorithms are fixed here, so a seed gives the same batches on every platform.
#pragma once

#include <torch/torch.h>

#include <lora/error.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "errors.hpp"

namespace data {

// ---------------------------------------------------------------------------------------------
// Deterministic shuffling

/// An integer uniform in [0, n), n > 0, from a std::mt19937_64 by rejection: draws below
/// 2^64 mod n are redrawn, the rest are taken mod n (the method of OpenBSD's
/// arc4random_uniform). std::uniform_int_distribution is not used: its algorithm differs
/// across standard libraries.
inline std::uint64_t uniform_below(std::mt19937_64& rng, std::uint64_t n) {
  const std::uint64_t threshold = (0 - n) % n;  // 2^64 mod n
  while (true) {
    const std::uint64_t r = rng();
    if (r >= threshold) return r % n;
  }
}

/// Fisher–Yates (Durstenfeld) shuffle: for i = size-1 down to 1, swap v[i] with
/// v[uniform_below(rng, i + 1)]. Used instead of std::shuffle, whose algorithm differs across
/// standard libraries, so that a seed gives the same order everywhere.
template <typename T>
void shuffle(std::vector<T>& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[uniform_below(rng, i)]);
}

/// 0, 1, ..., n-1 shuffled by shuffle() with a std::mt19937_64 seeded with `seed`.
inline std::vector<std::size_t> permutation(std::size_t n, std::uint64_t seed) {
  std::vector<std::size_t> p(n);
  std::iota(p.begin(), p.end(), std::size_t{0});
  std::mt19937_64 rng(seed);
  shuffle(p, rng);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Batching

enum class Padding {
  Dynamic,  ///< pad each batch to its longest sequence
  Fixed,    ///< pad every batch to max_len
};

struct BatchOptions {
  std::int64_t batch_size = 32;
  std::int64_t max_len = 512;  ///< truncation length; also T in Padding::Fixed
  std::int64_t pad_id = 0;
  Padding padding = Padding::Dynamic;
  bool keep_last = false;  ///< when truncating, keep the last id (e.g. [SEP]) as the max_len-th
  bool shuffle = true;     ///< false: examples in their order (evaluation)
  std::int64_t bucket_batches = 0;  ///< K > 0: length bucketing over chunks of K batches (e.g. 50)
  bool drop_last = false;           ///< drop a final batch smaller than batch_size
  torch::Dtype mask_dtype = torch::kInt64;  ///< kInt64 or kBool
};

/// One batch of tensors (see the top of this file).
struct Batch {
  torch::Tensor input_ids, attention_mask, labels;
};

namespace detail {

inline void check(const BatchOptions& o) {
  using examples::str;
  if (o.batch_size < 1) throw examples::DataError(str("batch_size is ", o.batch_size, "; it must be at least 1"));
  if (o.max_len < 1) throw examples::DataError(str("max_len is ", o.max_len, "; it must be at least 1"));
  if (o.bucket_batches < 0)
    throw examples::DataError(
        str("bucket_batches is ", o.bucket_batches, "; use 0 (no bucketing) or a positive count"));
  if (o.mask_dtype != torch::kInt64 && o.mask_dtype != torch::kBool)
    throw examples::DataError(str("mask_dtype is ", o.mask_dtype, "; use torch::kInt64 or torch::kBool"));
}

/// How many ids of a sequence of `len` ids are fed (after truncation).
inline std::int64_t fed_length(std::int64_t len, const BatchOptions& o) { return std::min(len, o.max_len); }

/// Stable sort of [first, last) by fed length, longest first.
inline void sort_by_length(std::vector<std::size_t>::iterator first, std::vector<std::size_t>::iterator last,
                           const std::vector<std::int64_t>& lengths, const BatchOptions& o) {
  std::stable_sort(first, last, [&](std::size_t a, std::size_t b) {
    return fed_length(lengths[a], o) > fed_length(lengths[b], o);
  });
}

/// `order` cut into consecutive batches of batch_size (the last may be smaller).
inline std::vector<std::vector<std::size_t>> cut(const std::vector<std::size_t>& order, const BatchOptions& o) {
  std::vector<std::vector<std::size_t>> batches;
  const auto bs = static_cast<std::size_t>(o.batch_size);
  for (std::size_t start = 0; start < order.size(); start += bs) {
    const std::size_t end = std::min(start + bs, order.size());
    if (o.drop_last && end - start < bs) break;
    batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(start),
                         order.begin() + static_cast<std::ptrdiff_t>(end));
  }
  return batches;
}

/// The fed ids of `seq`: truncated to max_len, keeping the last id if keep_last.
inline std::vector<std::int64_t> truncated(const std::vector<std::int64_t>& seq, const BatchOptions& o) {
  const auto n = static_cast<std::size_t>(fed_length(static_cast<std::int64_t>(seq.size()), o));
  std::vector<std::int64_t> out(seq.begin(), seq.begin() + static_cast<std::ptrdiff_t>(n));
  if (o.keep_last && n < seq.size()) out.back() = seq.back();
  return out;
}

/// input_ids and attention_mask of the sequences `batch` of `seqs`, truncated and padded.
inline std::pair<torch::Tensor, torch::Tensor> pad(const std::vector<std::vector<std::int64_t>>& seqs,
                                                   const std::vector<std::size_t>& batch, const BatchOptions& o) {
  using examples::str;
  check(o);
  if (batch.empty()) throw examples::DataError("collate: the batch holds no example indices");
  std::int64_t width = 0;
  for (std::size_t i : batch) {
    if (i >= seqs.size())
      throw examples::DataError(str("collate: example index ", i, " is out of range (", seqs.size(), " sequences)"));
    if (seqs[i].empty())
      throw examples::DataError(str("collate: sequence ", i, " is empty; drop empty examples before batching"));
    width = std::max(width, fed_length(static_cast<std::int64_t>(seqs[i].size()), o));
  }
  if (o.padding == Padding::Fixed) width = o.max_len;

  const auto b = static_cast<std::int64_t>(batch.size());
  auto ids = torch::full({b, width}, o.pad_id, torch::kInt64);
  auto mask = torch::zeros({b, width}, torch::kInt64);
  auto ids_a = ids.accessor<std::int64_t, 2>();
  auto mask_a = mask.accessor<std::int64_t, 2>();
  for (std::int64_t r = 0; r < b; ++r) {
    const auto fed = truncated(seqs[batch[static_cast<std::size_t>(r)]], o);
    for (std::size_t t = 0; t < fed.size(); ++t) {
      ids_a[r][static_cast<std::int64_t>(t)] = fed[t];
      mask_a[r][static_cast<std::int64_t>(t)] = 1;
    }
  }
  return {ids, mask.to(o.mask_dtype)};
}

}  // namespace detail

/// T of a batch: max_len (Padding::Fixed) or its longest fed length (Padding::Dynamic).
inline std::int64_t batch_width(const std::vector<std::int64_t>& lengths, const std::vector<std::size_t>& batch,
                                const BatchOptions& o) {
  if (o.padding == Padding::Fixed) return o.max_len;
  std::int64_t t = 0;
  for (std::size_t i : batch) t = std::max(t, detail::fed_length(lengths.at(i), o));
  return t;
}

/// The batches of one epoch, as lists of example indices (see the top of this file).
/// `lengths[i]` is the length of example i; `rng` supplies every random choice, so keep one
/// generator for the whole run (seeded once) to get a new, reproducible order each epoch.
inline std::vector<std::vector<std::size_t>> plan_batches(const std::vector<std::int64_t>& lengths,
                                                          const BatchOptions& o, std::mt19937_64& rng) {
  detail::check(o);
  std::vector<std::size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  if (o.shuffle) shuffle(order, rng);
  if (o.bucket_batches == 0) return detail::cut(order, o);

  const std::size_t chunk = static_cast<std::size_t>(o.bucket_batches * o.batch_size);
  for (std::size_t start = 0; start < order.size(); start += chunk) {
    const std::size_t end = std::min(start + chunk, order.size());
    detail::sort_by_length(order.begin() + static_cast<std::ptrdiff_t>(start),
                           order.begin() + static_cast<std::ptrdiff_t>(end), lengths, o);
  }
  auto batches = detail::cut(order, o);
  if (o.shuffle) shuffle(batches, rng);
  return batches;
}

/// Padding positions (B * T minus real tokens) summed over `batches`: the wasted work.
inline std::int64_t padding_count(const std::vector<std::int64_t>& lengths,
                                  const std::vector<std::vector<std::size_t>>& batches, const BatchOptions& o) {
  std::int64_t pad = 0;
  for (const auto& batch : batches) {
    pad += batch_width(lengths, batch, o) * static_cast<std::int64_t>(batch.size());
    for (std::size_t i : batch) pad -= detail::fed_length(lengths.at(i), o);
  }
  return pad;
}

/// Lengths of `seqs`, for plan_batches().
inline std::vector<std::int64_t> lengths_of(const std::vector<std::vector<std::int64_t>>& seqs) {
  std::vector<std::int64_t> lengths;
  lengths.reserve(seqs.size());
  for (const auto& s : seqs) lengths.push_back(static_cast<std::int64_t>(s.size()));
  return lengths;
}

/// A classification batch: labels (B) = labels[i] for each index i of `batch`.
inline Batch collate_classification(const std::vector<std::vector<std::int64_t>>& seqs,
                                    const std::vector<std::int64_t>& labels, const std::vector<std::size_t>& batch,
                                    const BatchOptions& o) {
  if (labels.size() != seqs.size())
    throw examples::DataError(examples::str("collate_classification: ", seqs.size(), " sequences but ",
                                                labels.size(), " labels; pass one label per sequence"));
  auto [ids, mask] = detail::pad(seqs, batch, o);
  std::vector<std::int64_t> y;
  y.reserve(batch.size());
  for (std::size_t i : batch) y.push_back(labels[i]);
  return {ids, mask, torch::tensor(y, torch::kInt64)};
}

/// A causal-LM batch: labels (B, T) = input_ids with -100 on padding (the model shifts them).
inline Batch collate_lm(const std::vector<std::vector<std::int64_t>>& seqs, const std::vector<std::size_t>& batch,
                        const BatchOptions& o) {
  auto [ids, mask] = detail::pad(seqs, batch, o);
  auto labels = ids.masked_fill(mask.logical_not(), -100);
  return {ids, mask, labels};
}

}  // namespace data

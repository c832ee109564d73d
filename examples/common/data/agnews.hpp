// AG-News (ag_news_csv): rows "class","title","description" with class 1..4
// (World, Sports, Business, Sci/Tech). Each row becomes label = class - 1 (0..3) and
// text = title + " " + description, bytes otherwise untouched (the HuggingFace `ag_news` copy
// does the same: a leading space of a description stays, so the join can give two spaces).
//
// The study's subsets: the train pool is shuffled with a seed and split 90/10; train = the
// first train_size rows of the 90% part, val = the first val_size rows of the 10% part; test
// is the official test.csv. The 10% part has ceil(0.1 * n) rows (as HF's train_test_split and
// scikit-learn round it), the 90% part the rest.
//
// The shuffle is data::permutation(n, seed) (batching.hpp): Fisher–Yates driven by a
// std::mt19937_64 seeded with `seed`, the same on every platform. It cannot reproduce the
// seed study's rows: that study shuffled the full 120,000-row train.csv with numpy, and only
// 14,995 genuine train rows are available here (agnews/train_subset_14995.csv), so with seed
// 42 the subsets differ from the study's while following the same rule.
#pragma once

#include <lora/error.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "errors.hpp"
#include "data/batching.hpp"
#include "data/csv.hpp"

namespace data {

inline constexpr std::array<const char*, 4> kAgNewsClasses = {"World", "Sports", "Business", "Sci/Tech"};

struct Example {
  std::string text;
  std::int64_t label = 0;
};

namespace detail {

/// Label 0..3 of a row's class field "1".."4"; anything else throws, naming file and line.
inline std::int64_t agnews_label(const CsvRow& row, const std::string& source) {
  const std::string& c = row.fields[0];
  if (c.size() != 1 || c[0] < '1' || c[0] > '4')
    throw examples::FileError(examples::str(source, ":", row.line, ": AG-News class is \"", c,
                                                "\", expected 1, 2, 3 or 4; is this an ag_news_csv file?"));
  return c[0] - '1';
}

}  // namespace detail

/// Every row of an ag_news_csv file (train.csv, test.csv or a subset), in file order.
inline std::vector<Example> read_agnews(const std::filesystem::path& path) {
  const auto rows = read_csv(path, 3);
  std::vector<Example> out;
  out.reserve(rows.size());
  for (const auto& row : rows)
    out.push_back({row.fields[1] + " " + row.fields[2], detail::agnews_label(row, path.string())});
  return out;
}

struct SplitOptions {
  std::size_t train_size = 10000;  ///< rows taken from the 90% part (--train-size)
  std::size_t val_size = 2000;     ///< rows taken from the 10% part (--val-size)
  double val_fraction = 0.1;       ///< share of the pool in the validation part
  std::uint64_t seed = 42;
};

struct TrainValSplit {
  std::vector<Example> train, val;
};

/// Rows in the validation part of a pool of n rows: ceil(val_fraction * n).
inline std::size_t val_part_size(std::size_t n, double val_fraction) {
  return static_cast<std::size_t>(std::ceil(val_fraction * static_cast<double>(n)));
}

/// The study's train/val subsets of `pool` (see the top of this file). `source` names the
/// pool in error messages.
inline TrainValSplit split_train_val(const std::vector<Example>& pool, const SplitOptions& o,
                                     const std::string& source) {
  using examples::str;
  if (!(o.val_fraction > 0.0 && o.val_fraction < 1.0))
    throw examples::DataError(str("val_fraction is ", o.val_fraction, "; it must lie strictly between 0 and 1"));
  const std::size_t n = pool.size(), n_val = val_part_size(n, o.val_fraction), n_train = n - n_val;
  if (o.train_size > n_train)
    throw examples::DataError(str("--train-size ", o.train_size, " exceeds the ", n_train, " rows of the ",
                                  100 - 100 * o.val_fraction, "% part of ", source, " (", n,
                                  " rows); pass --train-size ", n_train, " or less, or a larger train file"));
  if (o.val_size > n_val)
    throw examples::DataError(str("--val-size ", o.val_size, " exceeds the ", n_val, " rows of the ",
                                  100 * o.val_fraction, "% part of ", source, " (", n, " rows); pass --val-size ",
                                  n_val, " or less, or a larger train file"));
  const auto order = permutation(n, o.seed);
  TrainValSplit s;
  s.train.reserve(o.train_size);
  s.val.reserve(o.val_size);
  for (std::size_t k = 0; k < o.train_size; ++k) s.train.push_back(pool[order[k]]);
  for (std::size_t k = 0; k < o.val_size; ++k) s.val.push_back(pool[order[n_train + k]]);
  return s;
}

/// read_agnews() then split_train_val() of a train file.
inline TrainValSplit load_agnews_train(const std::filesystem::path& path, const SplitOptions& o) {
  return split_train_val(read_agnews(path), o, path.string());
}

}  // namespace data

// The sweep's grid: one Point per (seed, method/rank, learning rate), a stable key per point
// (its file name under out/points/), and the deterministic 1/N slice that `--shard I/N` runs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"

namespace sweep {

/// One run of the sweep.
struct Point {
  std::string method = "lora";  ///< "lora" or "full"
  double lr = 0;
  int64_t rank = 0;             ///< 0 for "full"
  double alpha = 0;             ///< the alpha handed to lora::Config (K * r with --alpha-per-rank); 0 for "full"
  std::string scaling;          ///< scaling policy name ("" for "full")
  std::string init;             ///< init policy name ("" for "full")
  bool alpha_column = false;    ///< the grid spans several alphas (--alphas): alpha is part of the column
  uint64_t seed = 42;
  std::map<std::string, std::string> extra;  ///< further settings, recorded with the point

  bool is_full() const { return method == "full"; }
};

namespace detail {

/// "%.4g" of `v` (or another printf format): numbers in the reports and the log.
inline std::string num(double v, const char* format = "%.4g") {
  char buf[48];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

/// The shortest decimal mantissa digits and exponent that read back as exactly `x` (x > 0):
/// 0.0001 -> {"1", -4}, 3.5e-5 -> {"35", -5}. Digits carry no trailing zeros.
inline std::pair<std::string, int> shortest_digits(double x) {
  char buf[40];
  for (int precision = 0; precision < 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*e", precision, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  const std::string s = buf;  // "d.ddde-XX"
  const auto e = s.find('e');
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  return {digits, std::atoi(s.c_str() + e + 1)};
}

/// "d[.ddd]e<sign>XX", at least two exponent digits (C's and Python's style).
inline std::string scientific(const std::string& digits, int exponent) {
  std::string m = digits.substr(0, 1);
  if (digits.size() > 1) m += "." + digits.substr(1);
  char e[16];
  std::snprintf(e, sizeof e, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return m + e;
}

}  // namespace detail

/// Python's str(float) of a positive finite `x`: the LR keys of the seed study's results.json
/// ("1e-05", "3e-05", "0.0001", "0.0003", "1000000.0"). Fixed notation for exponents -4..15.
inline std::string lr_string(double x) {
  const auto [digits, exponent] = detail::shortest_digits(x);
  if (exponent < -4 || exponent >= 16) return detail::scientific(digits, exponent);
  if (exponent < 0) return "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  const auto int_len = static_cast<size_t>(exponent) + 1;
  if (digits.size() <= int_len) return digits + std::string(int_len - digits.size(), '0') + ".0";
  return digits.substr(0, int_len) + "." + digits.substr(int_len);
}

/// The LR as it appears in a point key: always scientific, shortest mantissa ("1e-04",
/// "3.5e-05"), so 1e-4 and 0.0001 give the same key.
inline std::string lr_key(double x) {
  const auto [digits, exponent] = detail::shortest_digits(x);
  return detail::scientific(digits, exponent);
}

/// The alpha as it appears in a column name: the shortest decimal that reads back ("8", "0.5").
inline std::string alpha_text(double alpha) {
  char buf[40];
  for (int precision = 1; precision < 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, alpha);
    if (std::strtod(buf, nullptr) == alpha) break;
  }
  return buf;
}

/// The results column of a point: "full", "lora_r<rank>", or "lora_r<rank>_a<alpha>" when the
/// grid spans several alphas (--alphas).
inline std::string column(const Point& p) {
  if (p.is_full()) return "full";
  return "lora_r" + std::to_string(p.rank) + (p.alpha_column ? "_a" + alpha_text(p.alpha) : "");
}

/// The label of a column in tables and plots: "FullFT", "r16", "r16 a8".
inline std::string column_label(const std::string& column) {
  if (column == "full") return "FullFT";
  std::string label = column.rfind("lora_", 0) == 0 ? column.substr(5) : column;
  const auto a = label.find("_a");
  if (a != std::string::npos) label.replace(a, 1, " ");
  return label;
}

/// The stable key of a point, e.g. "lora_r16_lr1e-04_s42" or "full_lr3e-05_s42".
inline std::string key(const Point& p) {
  return column(p) + "_lr" + lr_key(p.lr) + "_s" + std::to_string(p.seed);
}

/// What the grid is built from (Options flattens into this, point.hpp build_grid(); cli.hpp holds the defaults).
struct GridSpec {
  std::vector<double> lrs;           ///< LoRA learning rates
  std::vector<int64_t> ranks;        ///< empty: no LoRA points
  std::vector<double> full_lrs;      ///< empty: no FullFT points
  std::vector<uint64_t> seeds;
  double alpha = 0;                  ///< used when alpha_per_rank is 0 and alphas is empty
  std::vector<double> alphas;        ///< several alphas: one column per rank and alpha
  std::map<double, std::vector<double>> alpha_lrs;  ///< LoRA LRs of one alpha of `alphas` (else `lrs`)
  double alpha_per_rank = 0;         ///< > 0: alpha = alpha_per_rank * r
  std::string scaling;               ///< a lora::scaling policy name
  std::string init;                  ///< a lora::init policy name
  std::map<std::string, std::string> extra;
};

/// Every point, in run order: for each seed, FullFT first, then ranks ascending (alphas
/// ascending within a rank); LRs ascending.
inline std::vector<Point> build_grid(const GridSpec& spec) {
  auto sorted = [](auto v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  std::vector<Point> grid;
  for (const auto seed : spec.seeds) {
    for (const double lr : sorted(spec.full_lrs)) {
      Point p;
      p.method = "full";
      p.lr = lr;
      p.seed = seed;
      p.extra = spec.extra;
      grid.push_back(p);
    }
    const auto alphas = spec.alphas.empty() ? std::vector<double>{0.0} : sorted(spec.alphas);
    for (const auto r : sorted(spec.ranks))
      for (const double alpha : alphas)
        for (const double lr : sorted(spec.alpha_lrs.count(alpha) ? spec.alpha_lrs.at(alpha) : spec.lrs)) {
          Point p;
          p.lr = lr;
          p.rank = r;
          p.alpha = !spec.alphas.empty()        ? alpha
                    : spec.alpha_per_rank > 0 ? spec.alpha_per_rank * static_cast<double>(r)
                                              : spec.alpha;
          p.alpha_column = spec.alphas.size() > 1;
          p.scaling = spec.scaling;
          p.init = spec.init;
          p.seed = seed;
          p.extra = spec.extra;
          grid.push_back(p);
        }
  }
  std::set<std::string> keys;
  for (const auto& p : grid)
    if (!keys.insert(key(p)).second)
      throw examples::UsageError("the grid holds point '" + key(p) +
                                 "' twice: a learning rate, rank, alpha or seed is listed twice (1e-4 and 0.0001 are the "
                                 "same LR). Remove the duplicate.");
  if (grid.empty())
    throw examples::UsageError(
        "the grid is empty: give LoRA ranks (--ranks) with --lrs, or --full-finetune / --full-lrs.");
  return grid;
}

/// `--shard I/N`: run the I-th of N slices (0 <= I < N).
struct Shard {
  int64_t index = 0;
  int64_t count = 1;
};

/// Parses "I/N"; throws examples::UsageError naming --shard for anything else.
inline Shard parse_shard(const std::string& text) {
  const auto fail = [&](const std::string& why) {
    return examples::UsageError("--shard: '" + text + "' " + why +
                                ". Give I/N with 0 <= I < N, e.g. --shard 0/4 (Slurm: "
                                "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT with --array=0-3).");
  };
  const auto slash = text.find('/');
  if (slash == std::string::npos) throw fail("has no '/'");
  auto integer = [&](const std::string& part) {
    if (part.empty() || part.find_first_not_of("0123456789-") != std::string::npos)
      throw fail("is not two integers");
    char* end = nullptr;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    if (*end != '\0') throw fail("is not two integers");
    return static_cast<int64_t>(v);
  };
  Shard s{integer(text.substr(0, slash)), integer(text.substr(slash + 1))};
  if (s.count <= 0) throw fail("has N <= 0");
  if (s.index < 0 || s.index >= s.count) throw fail("has I outside 0..N-1");
  return s;
}

/// The points of shard `s`: the grid's keys sorted, dealt round-robin to N shards; returned in
/// grid (run) order. The same grid gives the same slices on every machine.
inline std::vector<Point> select_shard(const std::vector<Point>& grid, const Shard& s) {
  std::vector<std::string> keys;
  for (const auto& p : grid) keys.push_back(key(p));
  std::sort(keys.begin(), keys.end());
  std::set<std::string> mine;
  for (size_t i = 0; i < keys.size(); ++i)
    if (static_cast<int64_t>(i % static_cast<size_t>(s.count)) == s.index) mine.insert(keys[i]);
  std::vector<Point> out;
  for (const auto& p : grid)
    if (mine.count(key(p))) out.push_back(p);
  return out;
}

}  // namespace sweep

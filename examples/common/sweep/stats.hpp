// Statistics over seeds: the sample mean and standard deviation (and the element-wise mean of
// loss curves), and the 95% confidence interval of a mean from Student's t distribution. The
// study reports optimal learning rates and their LoRA/FullFT ratios over seeds; both are scale
// quantities, so their interval is taken on log10 of the values and reported as a geometric
// mean with [lo, hi].
#pragma once

#include <cmath>
#include <cstddef>
#include <numeric>
#include <optional>
#include <vector>

namespace sweep {

/// The sample mean of `v` (NaN when empty).
inline double mean_of(const std::vector<double>& v) {
  if (v.empty()) return NAN;
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

/// The sample standard deviation of `v` (n - 1 in the denominator; 0 for fewer than 2 values).
inline double stddev_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean_of(v);
  double ss = 0;
  for (const double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / static_cast<double>(v.size() - 1));
}

/// The element-wise mean of the lists of equal length (empty when lengths differ or none).
inline std::vector<double> mean_lists(const std::vector<std::vector<double>>& lists) {
  if (lists.empty()) return {};
  std::vector<double> out(lists.front().size(), 0.0);
  for (const auto& l : lists) {
    if (l.size() != out.size()) return {};
    for (size_t i = 0; i < l.size(); ++i) out[i] += l[i] / static_cast<double>(lists.size());
  }
  return out;
}

/// The 0.975 quantile of Student's t with `df` >= 1 degrees of freedom (two-sided 95%).
/// Tabulated to 3 decimals for df <= 30; above, the normal approximation with the first
/// Cornish-Fisher correction (error < 0.001).
inline double t_quantile_975(std::size_t df) {
  static const double table[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                 2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                                 2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df == 0) return NAN;
  if (df <= 30) return table[df - 1];
  const double z = 1.959964, d = static_cast<double>(df);
  return z + (z * z * z + z) / (4 * d);
}

/// A 95% confidence interval of a mean over `n` values.
struct Interval {
  std::size_t n = 0;
  double mean = NAN;  ///< the sample mean
  double sd = NAN;    ///< the sample standard deviation
  double lo = NAN;    ///< mean - t(0.975, n-1) * sd / sqrt(n)
  double hi = NAN;    ///< mean + t(0.975, n-1) * sd / sqrt(n)
};

/// The Student-t 95% interval of the mean of `v`; nothing for fewer than 2 values.
inline std::optional<Interval> t_interval(const std::vector<double>& v) {
  if (v.size() < 2) return std::nullopt;
  Interval i;
  i.n = v.size();
  i.mean = mean_of(v);
  i.sd = stddev_of(v);
  const double half = t_quantile_975(v.size() - 1) * i.sd / std::sqrt(static_cast<double>(v.size()));
  i.lo = i.mean - half;
  i.hi = i.mean + half;
  return i;
}

/// The interval of positive `v` taken on log10(v), mapped back: mean is the geometric mean,
/// [lo, hi] its 95% interval, sd the standard deviation of log10(v). Nothing for < 2 values.
inline std::optional<Interval> log_t_interval(const std::vector<double>& v) {
  std::vector<double> logs;
  for (const double x : v) logs.push_back(std::log10(x));
  auto i = t_interval(logs);
  if (!i) return std::nullopt;
  i->mean = std::pow(10.0, i->mean);
  i->lo = std::pow(10.0, i->lo);
  i->hi = std::pow(10.0, i->hi);
  return i;
}

}  // namespace sweep

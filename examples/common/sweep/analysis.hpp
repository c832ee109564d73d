// The sweep's analysis of the point files' records (point.hpp: RunRecord): the curves of a
// value (the task's metric or the best validation loss) over learning rate per run column, the
// optimal LR of a curve (a parabola in log10(LR) through the best grid point), each seed's own
// optimum and the spread of optima over seeds, the settings common to every run, and the
// training-loss curves at one LR. The second round's estimators are in robust.hpp; what the
// report shows is rendered by report.hpp (results.json, summary.md) and plot.hpp.
//
// Statistics over seeds (first below): the sample mean and standard deviation (and the
// element-wise mean of loss curves), and the 95% confidence interval of a mean from Student's t
// distribution. The study reports optimal learning rates and their LoRA/FullFT ratios over
// seeds; both are scale quantities, so their interval is taken on log10 of the values and
// reported as a geometric mean with [lo, hi].
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "grid.hpp"
#include "point.hpp"
#include "task.hpp"

namespace sweep {

// ---------------------------------------------------------------------------------------------
// Statistics over seeds

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

// ---------------------------------------------------------------------------------------------
// Curves, optima and spreads

/// Sets each record's `collapsed` by `rule`.
inline void mark_collapsed(std::vector<RunRecord>& records, const CollapseRule& rule) {
  for (auto& r : records) r.collapsed = rule.collapsed(r.metric, r.diverged);
}

/// One LR of one run column: the values over seeds (diverged seeds left out).
struct Cell {
  double lr = 0;
  std::vector<double> values;
  int runs = 0;
  int diverged = 0;
  int collapsed = 0;  ///< runs with a value that collapsed (RunRecord::collapsed), diverged ones not counted

  bool valid() const { return !values.empty(); }
  double mean() const { return mean_of(values); }
  /// Sample standard deviation (0 for one value).
  double stddev() const { return stddev_of(values); }
};

/// One line of the plot / column of the table: a run column's cells by ascending LR.
struct Curve {
  std::string column;  ///< "full" or "lora_r16"
  std::string label;   ///< "FullFT", "r16", "r16 a8" (column_label())
  bool full = false;
  int64_t rank = 0;
  std::vector<Cell> cells;
};

/// The curves of `records` for the value `value_of` picks (empty optional: diverged or absent),
/// FullFT first, then ranks ascending (alphas ascending within a rank).
inline std::vector<Curve> make_curves(const std::vector<RunRecord>& records,
                                      const std::function<std::optional<double>(const RunRecord&)>& value_of) {
  std::map<std::tuple<int64_t, double, std::string>, Curve> by_column;  // full has rank 0: first
  for (const auto& rec : records) {
    auto& c = by_column[{rec.method == "full" ? 0 : rec.rank, rec.alpha, rec.column}];
    c.column = rec.column;
    c.full = rec.method == "full";
    c.rank = rec.rank;
    c.label = column_label(rec.column);
    auto it = std::find_if(c.cells.begin(), c.cells.end(), [&](const Cell& x) { return x.lr == rec.lr; });
    if (it == c.cells.end()) it = c.cells.insert(c.cells.end(), Cell{rec.lr, {}, 0, 0, 0});
    ++it->runs;
    const auto v = value_of(rec);
    if (rec.diverged || !v) {
      ++it->diverged;
    } else {
      it->values.push_back(*v);
      it->collapsed += rec.collapsed;
    }
  }
  std::vector<Curve> out;
  for (auto& kv : by_column) {
    std::sort(kv.second.cells.begin(), kv.second.cells.end(), [](const Cell& a, const Cell& b) { return a.lr < b.lr; });
    out.push_back(std::move(kv.second));
  }
  return out;
}

/// The vertex of the parabola through three points (x ascending): {x, y, a} with a the
/// coefficient of x^2; nothing when the points are collinear.
struct Vertex {
  double x = 0, y = 0, a = 0;
};
inline std::optional<Vertex> parabola_vertex(const std::array<double, 3>& x, const std::array<double, 3>& y) {
  const double d1 = (y[1] - y[0]) / (x[1] - x[0]);
  const double d2 = (y[2] - y[1]) / (x[2] - x[1]);
  const double a = (d2 - d1) / (x[2] - x[0]);
  if (a == 0 || !std::isfinite(a)) return std::nullopt;
  const double b = d1 - a * (x[0] + x[1]);
  const double xv = -b / (2 * a);
  return Vertex{xv, y[0] + d1 * (xv - x[0]) + a * (xv - x[0]) * (xv - x[1]), a};
}

/// The optimal LR of one curve.
struct Optimum {
  bool found = false;       ///< false: no LR gave a finite value
  double grid_lr = 0;       ///< the best grid point
  double grid_value = 0;
  double lr = 0;            ///< the interpolated optimum (the grid point when not interpolated)
  double value = 0;
  bool interpolated = false;
  std::string note;         ///< why it was not interpolated
};

/// The best grid LR of `c`, and the optimum of the parabola in log10(LR) through it and its two
/// neighbours. At a grid edge, next to a diverged or missing neighbour, or when the parabola
/// opens the wrong way, the optimum is the best grid point, and `note` says why.
inline Optimum find_optimum(const Curve& c, bool higher_is_better) {
  Optimum o;
  int best = -1;
  for (int i = 0; i < static_cast<int>(c.cells.size()); ++i) {
    const auto& cell = c.cells[static_cast<size_t>(i)];
    if (!cell.valid()) continue;
    const bool better = best < 0 || (higher_is_better ? cell.mean() > c.cells[static_cast<size_t>(best)].mean()
                                                      : cell.mean() < c.cells[static_cast<size_t>(best)].mean());
    if (better) best = i;
  }
  if (best < 0) {
    o.note = "no LR gave a finite value";
    return o;
  }
  const auto& b = c.cells[static_cast<size_t>(best)];
  o.found = true;
  o.grid_lr = o.lr = b.lr;
  o.grid_value = o.value = b.mean();
  const std::string at = "best at LR " + lr_string(b.lr);
  if (best == 0 || best + 1 == static_cast<int>(c.cells.size())) {
    o.note = at + ", the edge of the grid: not interpolated; extend the grid past it";
    return o;
  }
  const auto& lo = c.cells[static_cast<size_t>(best - 1)];
  const auto& hi = c.cells[static_cast<size_t>(best + 1)];
  if (!lo.valid() || !hi.valid()) {
    o.note = at + ", next to a diverged LR: not interpolated";
    return o;
  }
  const auto v = parabola_vertex({std::log10(lo.lr), std::log10(b.lr), std::log10(hi.lr)}, {lo.mean(), b.mean(), hi.mean()});
  if (!v || (higher_is_better ? v->a > 0 : v->a < 0)) {
    o.note = at + ", flat around it: not interpolated";
    return o;
  }
  o.lr = std::pow(10.0, v->x);
  o.value = v->y;
  o.interpolated = true;
  return o;
}

/// The optimum of every curve, in curve order.
inline std::vector<Optimum> find_optima(const std::vector<Curve>& curves, bool higher_is_better) {
  std::vector<Optimum> out;
  for (const auto& c : curves) out.push_back(find_optimum(c, higher_is_better));
  return out;
}

/// The optimum of the FullFT curve among `curves`, or nullptr when it has none.
inline const Optimum* full_optimum(const std::vector<Curve>& curves, const std::vector<Optimum>& optima) {
  const Optimum* full = nullptr;
  for (size_t i = 0; i < curves.size(); ++i)
    if (curves[i].full && optima[i].found) full = &optima[i];
  return full;
}

/// Each seed's own optimum: seed -> column -> the optimum of that seed's curve alone.
using SeedOptima = std::map<uint64_t, std::map<std::string, Optimum>>;

inline SeedOptima seed_optima(const std::vector<RunRecord>& records,
                              const std::function<std::optional<double>(const RunRecord&)>& value_of,
                              bool higher_is_better) {
  std::map<uint64_t, std::vector<RunRecord>> by_seed;
  for (const auto& r : records) by_seed[r.seed].push_back(r);
  SeedOptima out;
  for (const auto& [seed, rs] : by_seed) {
    const auto curves = make_curves(rs, value_of);
    const auto optima = find_optima(curves, higher_is_better);
    for (size_t i = 0; i < curves.size(); ++i) out[seed][curves[i].column] = optima[i];
  }
  return out;
}

/// One column's optimal LR over seeds, and its ratio to FullFT's seed by seed.
struct SeedSpread {
  std::map<uint64_t, Optimum> optima;    ///< the seeds whose curve has an optimum
  std::map<uint64_t, double> ratios;     ///< optimum LR / FullFT's optimum LR of the same seed
  std::optional<Interval> lr;            ///< over `optima`, on log10 (geometric mean)
  std::optional<Interval> ratio;         ///< over `ratios`, on log10 (geometric mean)
  int at_grid_point = 0;                 ///< seeds whose optimum (or FullFT's) was not interpolated
};

inline SeedSpread seed_spread(const SeedOptima& so, const std::string& column) {
  SeedSpread s;
  std::vector<double> lrs, ratios;
  for (const auto& [seed, by_column] : so) {
    const auto it = by_column.find(column);
    if (it == by_column.end() || !it->second.found) continue;
    s.optima[seed] = it->second;
    lrs.push_back(it->second.lr);
    bool interpolated = it->second.interpolated;
    const auto full = by_column.find("full");
    if (column != "full" && full != by_column.end() && full->second.found) {
      s.ratios[seed] = it->second.lr / full->second.lr;
      ratios.push_back(s.ratios[seed]);
      interpolated = interpolated && full->second.interpolated;
    }
    s.at_grid_point += !interpolated;
  }
  s.lr = log_t_interval(lrs);
  s.ratio = log_t_interval(ratios);
  return s;
}

/// The settings (top-level keys of each record's "settings") equal in every record.
inline nlohmann::json common_settings(const std::vector<RunRecord>& records) {
  nlohmann::json common = nlohmann::json::object();
  if (records.empty()) return common;
  for (const auto& [k, v] : records.front().doc.at("settings").items()) {
    bool same = true;
    for (const auto& r : records) same = same && r.doc.at("settings").contains(k) && r.doc.at("settings").at(k) == v;
    if (same) common[k] = v;
  }
  return common;
}

/// A value the report analyses per LR and run: its key, label and direction, and how to read it
/// from a record.
struct Measure {
  Metric metric;
  std::function<std::optional<double>(const RunRecord&)> of;
};

/// The values of the report, in order: the task's `metric`, then the best validation loss.
inline std::vector<Measure> measures(const Metric& metric) {
  return {{metric, [](const RunRecord& r) { return r.metric; }},
          {{"best_val_loss", "best validation loss", false}, [](const RunRecord& r) { return r.best_val_loss; }}};
}

/// One value analysed: its curves (FullFT first, then ranks ascending), the optimum of each
/// (of the mean over seeds), and each seed's own optima.
struct Analysis {
  Measure measure;
  std::vector<Curve> curves;
  std::vector<Optimum> optima;  ///< one per curve
  SeedOptima per_seed;
};

/// The analysis of measure `m` over `records`.
inline Analysis analyse(const std::vector<RunRecord>& records, const Measure& m) {
  Analysis a{m, make_curves(records, m.of), {}, seed_optima(records, m.of, m.metric.higher_is_better)};
  a.optima = find_optima(a.curves, m.metric.higher_is_better);
  return a;
}

/// One line of a training-loss plot: `loss[i]` after `step[i]` optimizer steps.
struct LossCurve {
  std::string label;  ///< "FullFT", "r16"
  bool full = false;
  std::vector<int64_t> step;
  std::vector<double> loss;
};

/// The training-loss curve of every column at learning rate `lr`, each the mean over the seeds
/// that did not diverge (point files without "train_curve", or whose steps differ from the
/// first seed's, are left out). FullFT first, then ranks ascending.
inline std::vector<LossCurve> loss_curves_at(const std::vector<RunRecord>& records, double lr) {
  std::map<std::pair<int64_t, std::string>, std::vector<const RunRecord*>> by_column;
  for (const auto& r : records)
    if (r.lr == lr && !r.diverged && r.doc.at("results").contains("train_curve"))
      by_column[{r.method == "full" ? 0 : r.rank, r.column}].push_back(&r);
  std::vector<LossCurve> out;
  for (const auto& [k, rs] : by_column) {
    LossCurve c;
    c.full = k.second == "full";
    c.label = column_label(k.second);
    std::vector<std::vector<double>> losses;
    for (const auto* r : rs) {
      const auto& tc = r->doc.at("results").at("train_curve");
      const auto steps = tc.at("step").get<std::vector<int64_t>>();
      if (c.step.empty()) c.step = steps;
      if (steps != c.step) continue;
      losses.push_back(tc.at("loss").get<std::vector<double>>());
    }
    c.loss = mean_lists(losses);
    if (!c.loss.empty()) out.push_back(std::move(c));
  }
  return out;
}

}  // namespace sweep

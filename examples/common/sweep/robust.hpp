// The second round's estimators, which keep the optimum apart from the cliff next to it:
//  - a run collapsed when the task's CollapseRule says so (task.hpp: chance accuracy, a
//    perplexity no better than the base's, a non-finite loss);
//  - the optimum is fitted only on runs that did not collapse, by a least-squares quadratic in
//    log10(LR) (and in log10 of the value for a ratio-scale metric such as perplexity) on every
//    such run within half a decade of the best LR: all seeds' runs for a column's pooled
//    optimum, one seed's for that seed's optimum;
//  - the stability edge of a seed is the largest LR that did not collapse below the first LR
//    above the best that did;
//  - ratios seed by seed: LoRA over FullFT (optimum and edge), and each LoRA column over the
//    first LoRA column of the sweep (the rank effect, paired within seed, so FullFT's noise
//    drops out);
//  - with LoRA columns of one rank at several scales s (--alphas), the slope of log10(optimum LR), and of
//    log10(edge), against log10(s) over every seed's value, with its 95% interval: -1 means the
//    optimum follows 1/s.
// The parabola through three grid points (analysis.hpp) stays beside these, for comparison.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "analysis.hpp"
#include "grid.hpp"
#include "task.hpp"

namespace sweep {

/// Half a decade: the fit window around the best LR, in log10(LR).
inline constexpr double kFitWindowDecades = 0.5;

/// One run as the fits see it.
struct RunValue {
  double lr = 0;
  double value = 0;  ///< meaningful when !collapsed
  uint64_t seed = 0;
  bool collapsed = false;
};

/// An optimum fitted on runs that did not collapse.
struct FitOptimum {
  bool found = false;        ///< false: every run collapsed
  double best_lr = 0;        ///< the best LR among runs that did not collapse (mean over seeds)
  double best_value = 0;
  double lr = 0;             ///< the vertex of the fit (best_lr when not interpolated)
  double value = 0;          ///< the fitted value there (best_value when not interpolated)
  bool interpolated = false;
  int runs = 0;              ///< runs in the fit
  int lrs = 0;               ///< distinct LRs in the fit
  std::string note;          ///< why it was not interpolated
};

namespace detail {

/// Least squares y = a x^2 + b x + c; nothing when the normal equations are singular.
inline std::optional<std::array<double, 3>> fit_quadratic(const std::vector<double>& x, const std::vector<double>& y) {
  // Centred x keeps the normal equations well conditioned.
  double mx = 0;
  for (const double v : x) mx += v / static_cast<double>(x.size());
  double s[5] = {0, 0, 0, 0, 0}, t[3] = {0, 0, 0};  // s[k] = sum u^k, t[k] = sum u^k y
  for (size_t i = 0; i < x.size(); ++i) {
    const double u = x[i] - mx;
    double p = 1;
    for (int k = 0; k < 5; ++k) {
      s[k] += p;
      if (k < 3) t[k] += p * y[i];
      p *= u;
    }
  }
  // [s4 s3 s2; s3 s2 s1; s2 s1 s0] [a b c]^T = [t2 t1 t0]^T, by Cramer's rule.
  const auto det3 = [](double a, double b, double c, double d, double e, double f, double g, double h, double i) {
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g);
  };
  const double D = det3(s[4], s[3], s[2], s[3], s[2], s[1], s[2], s[1], s[0]);
  if (!(std::abs(D) > 1e-12 * std::max(1.0, std::abs(s[4] * s[2] * s[0])))) return std::nullopt;
  const double a = det3(t[2], s[3], s[2], t[1], s[2], s[1], t[0], s[1], s[0]) / D;
  const double b = det3(s[4], t[2], s[2], s[3], t[1], s[1], s[2], t[0], s[0]) / D;
  const double c = det3(s[4], s[3], t[2], s[3], s[2], t[1], s[2], s[1], t[0]) / D;
  // Back to x: a (x - mx)^2 + b (x - mx) + c.
  return std::array<double, 3>{a, b - 2 * a * mx, a * mx * mx - b * mx + c};
}

}  // namespace detail

/// The optimum of `runs` (one seed's, or every seed's of one column) by the least-squares
/// quadratic described at the top; `log_values` fits log10 of the values.
inline FitOptimum fit_optimum(const std::vector<RunValue>& runs, bool higher_is_better, bool log_values) {
  FitOptimum o;
  std::map<double, std::vector<double>> by_lr;
  for (const auto& r : runs)
    if (!r.collapsed) by_lr[r.lr].push_back(r.value);
  if (by_lr.empty()) {
    o.note = "every run collapsed";
    return o;
  }
  o.found = true;
  bool first = true;
  for (const auto& [lr, values] : by_lr) {
    const double m = mean_of(values);
    if (first || (higher_is_better ? m > o.best_value : m < o.best_value)) o.best_lr = lr, o.best_value = m;
    first = false;
  }
  o.lr = o.best_lr;
  o.value = o.best_value;
  const double centre = std::log10(o.best_lr);
  std::vector<double> x, y;
  std::set<double> lrs;
  for (const auto& r : runs) {
    if (r.collapsed || std::abs(std::log10(r.lr) - centre) > kFitWindowDecades + 1e-9) continue;
    if (log_values && !(r.value > 0)) continue;
    x.push_back(std::log10(r.lr));
    y.push_back(log_values ? std::log10(r.value) : r.value);
    lrs.insert(r.lr);
  }
  o.runs = static_cast<int>(x.size());
  o.lrs = static_cast<int>(lrs.size());
  const std::string at = "best at LR " + lr_string(o.best_lr);
  if (lrs.size() < 3) {
    o.note = at + ", with " + std::to_string(lrs.size()) +
             " LR(s) that did not collapse within half a decade: not fitted; refine the grid there";
    return o;
  }
  const auto q = detail::fit_quadratic(x, y);
  if (!q || (higher_is_better ? (*q)[0] >= 0 : (*q)[0] <= 0)) {
    o.note = at + ", the fit has no interior " + std::string(higher_is_better ? "maximum" : "minimum") +
             ": not interpolated";
    return o;
  }
  const double xv = -(*q)[1] / (2 * (*q)[0]);
  if (xv < *std::min_element(x.begin(), x.end()) || xv > *std::max_element(x.begin(), x.end())) {
    o.note = at + ", the fit's vertex (LR " + detail::num(std::pow(10.0, xv), "%.3g") +
             ") lies outside the fitted LRs: not interpolated; extend the grid past it";
    return o;
  }
  const double yv = ((*q)[0] * xv + (*q)[1]) * xv + (*q)[2];
  o.lr = std::pow(10.0, xv);
  o.value = log_values ? std::pow(10.0, yv) : yv;
  o.interpolated = true;
  return o;
}

/// One seed's stability edge.
struct Edge {
  bool found = false;     ///< false: no run collapsed above the best LR (or all collapsed)
  double lr = 0;          ///< the largest LR that did not collapse below the first collapse
  double collapsed_lr = 0;  ///< that first collapsed LR above the best
  std::string note;
};

/// The edge of one seed's `runs` (see the top), given that seed's best LR `best_lr`.
inline Edge stability_edge(std::vector<RunValue> runs, double best_lr) {
  std::sort(runs.begin(), runs.end(), [](const RunValue& a, const RunValue& b) { return a.lr < b.lr; });
  Edge e;
  double last_ok = 0;
  for (const auto& r : runs) {
    if (r.lr < best_lr) continue;
    if (!r.collapsed) {
      last_ok = r.lr;
      continue;
    }
    e.found = last_ok > 0;
    e.lr = last_ok;
    e.collapsed_lr = r.lr;
    return e;
  }
  e.note = runs.empty() ? "no run" : "no collapse up to LR " + lr_string(runs.back().lr);
  return e;
}

/// A least-squares line y = intercept + slope x with the 95% interval of the slope.
struct Slope {
  size_t n = 0;
  double slope = NAN, intercept = NAN, lo = NAN, hi = NAN;
};

/// The line through (x, y) by ordinary least squares, with a Student t interval on the slope
/// (n - 2 degrees of freedom); nothing for fewer than 3 points or a single x.
inline std::optional<Slope> fit_line(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = x.size();
  if (n < 3) return std::nullopt;
  const double mx = mean_of(x), my = mean_of(y);
  double sxx = 0, sxy = 0;
  for (size_t i = 0; i < n; ++i) sxx += (x[i] - mx) * (x[i] - mx), sxy += (x[i] - mx) * (y[i] - my);
  if (!(sxx > 0)) return std::nullopt;
  Slope s;
  s.n = n;
  s.slope = sxy / sxx;
  s.intercept = my - s.slope * mx;
  double sse = 0;
  for (size_t i = 0; i < n; ++i) {
    const double r = y[i] - s.intercept - s.slope * x[i];
    sse += r * r;
  }
  const double se = std::sqrt(sse / static_cast<double>(n - 2) / sxx);
  const double half = t_quantile_975(n - 2) * se;
  s.lo = s.slope - half;
  s.hi = s.slope + half;
  return s;
}

/// One column under the second round's estimators.
struct RobustColumn {
  std::string column, label;
  bool full = false;
  int64_t rank = 0;
  double scale = 0;  ///< LoRA's s (0 for FullFT, NaN when the column's runs differ)
  int runs = 0, collapsed = 0;
  FitOptimum pooled;                        ///< every seed's runs in one fit
  std::map<uint64_t, FitOptimum> seeds;     ///< each seed's own fit
  std::map<uint64_t, Edge> edges;           ///< each seed's stability edge
  std::map<uint64_t, double> ratios;        ///< optimum / FullFT's optimum, same seed
  std::map<uint64_t, double> edge_ratios;   ///< edge / FullFT's edge, same seed
  std::string paired_to;                    ///< the column `paired` divides by ("" for none)
  std::map<uint64_t, double> paired;        ///< optimum / paired_to's optimum, same seed
  std::optional<Interval> lr, ratio, edge, edge_ratio, paired_ratio;  ///< over seeds, on log10
};

/// Every column of one measure, and the slopes against the scale.
struct RobustAnalysis {
  std::string rule;  ///< the CollapseRule's description
  std::vector<RobustColumn> columns;  ///< in the order of the Analysis' curves
  std::optional<Slope> optimum_slope, edge_slope;  ///< log10(LR) on log10(scale), LoRA columns
  size_t scales = 0;  ///< distinct scales among the LoRA columns, when they share one rank (else 0)
};

/// The second round's analysis of `m` over `records` (already marked by mark_collapsed()),
/// with `curves` giving the column order.
inline RobustAnalysis robust_analysis(const std::vector<RunRecord>& records, const Measure& m,
                                      const std::vector<Curve>& curves, const std::string& rule) {
  RobustAnalysis out;
  out.rule = rule;
  const bool higher = m.metric.higher_is_better, logv = m.metric.log_scale;
  std::map<std::string, std::vector<RunValue>> by_column;
  std::map<std::string, std::set<double>> scales;
  for (const auto& r : records) {
    const auto v = m.of(r);
    by_column[r.column].push_back({r.lr, v.value_or(NAN), r.seed, r.collapsed || !v});
    scales[r.column].insert(r.scale);
  }
  for (const auto& c : curves) {
    RobustColumn rc;
    rc.column = c.column;
    rc.label = c.label;
    rc.full = c.full;
    rc.rank = c.rank;
    rc.scale = scales[c.column].size() == 1 ? *scales[c.column].begin() : NAN;
    const auto& runs = by_column[c.column];
    rc.runs = static_cast<int>(runs.size());
    std::map<uint64_t, std::vector<RunValue>> by_seed;
    for (const auto& r : runs) {
      rc.collapsed += r.collapsed;
      by_seed[r.seed].push_back(r);
    }
    rc.pooled = fit_optimum(runs, higher, logv);
    for (const auto& [seed, rs] : by_seed) {
      const auto f = fit_optimum(rs, higher, logv);
      if (!f.found) continue;
      rc.seeds[seed] = f;
      rc.edges[seed] = stability_edge(rs, f.best_lr);
    }
    out.columns.push_back(std::move(rc));
  }
  // Ratios within seed: to FullFT, and each LoRA column to the first LoRA column.
  const RobustColumn* full = nullptr;
  const RobustColumn* first_lora = nullptr;
  for (const auto& rc : out.columns) {
    if (rc.full && !full) full = &rc;
    if (!rc.full && !first_lora) first_lora = &rc;
  }
  for (auto& rc : out.columns) {
    std::vector<double> lrs, ratios, edges, edge_ratios, paired;
    if (!rc.full && first_lora && &rc != first_lora) rc.paired_to = first_lora->label;
    for (const auto& [seed, f] : rc.seeds) {
      lrs.push_back(f.lr);
      const auto& e = rc.edges.at(seed);
      if (e.found) edges.push_back(e.lr);
      if (full && !rc.full && full->seeds.count(seed)) {
        rc.ratios[seed] = f.lr / full->seeds.at(seed).lr;
        ratios.push_back(rc.ratios[seed]);
        const auto& fe = full->edges.at(seed);
        if (e.found && fe.found) edge_ratios.push_back(rc.edge_ratios[seed] = e.lr / fe.lr);
      }
      if (!rc.paired_to.empty() && first_lora->seeds.count(seed)) {
        rc.paired[seed] = f.lr / first_lora->seeds.at(seed).lr;
        paired.push_back(rc.paired[seed]);
      }
    }
    rc.lr = log_t_interval(lrs);
    rc.ratio = log_t_interval(ratios);
    rc.edge = log_t_interval(edges);
    rc.edge_ratio = log_t_interval(edge_ratios);
    rc.paired_ratio = log_t_interval(paired);
  }
  // Against the scale: every seed's value of every LoRA column with one known scale, when the
  // LoRA columns share one rank (--alphas): across ranks the scale alpha/r moves with the rank.
  std::vector<double> xs, ys, exs, eys;
  std::set<double> distinct;
  std::set<int64_t> ranks;
  for (const auto& rc : out.columns)
    if (!rc.full) ranks.insert(rc.rank);
  for (const auto& rc : out.columns) {
    if (rc.full || !(rc.scale > 0) || ranks.size() != 1) continue;
    distinct.insert(rc.scale);
    for (const auto& [seed, f] : rc.seeds) {
      xs.push_back(std::log10(rc.scale));
      ys.push_back(std::log10(f.lr));
      const auto& e = rc.edges.at(seed);
      if (e.found) exs.push_back(std::log10(rc.scale)), eys.push_back(std::log10(e.lr));
    }
  }
  out.scales = distinct.size();
  if (distinct.size() >= 2) {
    out.optimum_slope = fit_line(xs, ys);
    out.edge_slope = fit_line(exs, eys);
  }
  return out;
}

}  // namespace sweep

// The sweep's answers: results.json (the seed study's schema inside a document that records
// every setting), summary.md (metric per LR and rank, the optimal LR per run, interpolated in
// log10(LR), and the LoRA/FullFT ratio of optimal LRs), built from the point files.
//
// results.json:
// {
//   "schema": "lora-sweep-results/1",
//   "task": "agnews", "model": "distilbert-base-uncased",
//   "metric": {"key": "test_acc", "label": "...", "higher_is_better": true},
//   "settings": {...},            // every setting that is the same in all runs below
//   "columns": ["full", "lora_r16", ...],   // display order
//   "seeds": [42],
//   "runs": {
//     "<column>": {               // "full" or "lora_r<rank>"
//       "<lr>": {                 // the LR as Python's str(float) writes it: "1e-05", "0.0001"
//         // The seed study's record. With one seed: that seed's numbers. With several: the mean
//         // over the seeds that did not diverge (losses per epoch averaged element-wise).
//         "best_val_loss": 0.27, "test_acc": 91.2, "train_losses": [...], "val_losses": [...],
//         "diverged": false,      // true when every seed diverged (then the numbers are null)
//         "n_seeds": 1, "n_diverged": 0,
//         "test_acc_std": null, "best_val_loss_std": null,   // sample std over seeds (n >= 2)
//         "seeds": {"42": {       // each seed's own record
//           "key": "lora_r16_lr1e-04_s42", "best_val_loss": ..., "test_acc": ..., "train_losses": [...],
//           "val_losses": [...], "diverged": false, "diverged_reason": null, "steps": 1565,
//           "wall_time_s": 812.3,
//           "settings": {...},    // the settings of this run NOT in the top-level "settings"
//           "environment": {...}  // host, device, versions, paths, command line
//         }}
//       }
//     }
//   },
//   "optimum": {"test_acc": {...}, "best_val_loss": {...}},  // per column, see optimum_json()
//   "missing": ["<key>", ...]     // grid points without a result yet
// }
// A run's full settings are the top-level "settings" plus its own "settings": no number is
// ambiguous. Metric values are null when the run diverged.
#pragma once

#include <lora/error.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "grid.hpp"
#include "stats.hpp"

namespace sweep {

/// The task's headline number.
struct Metric {
  std::string key = "test_acc";             ///< field name in results.json: "test_acc", "test_ppl"
  std::string label = "test accuracy (%)";  ///< axis and table label
  bool higher_is_better = true;
};

/// One point file, as the report needs it.
struct RunRecord {
  std::string key, column, method;
  int64_t rank = 0;
  double lr = 0;
  uint64_t seed = 0;
  std::optional<double> metric, best_val_loss;
  bool diverged = false;
  nlohmann::json doc;  ///< the whole point file
};

namespace detail {

inline std::optional<double> optional_number(const nlohmann::json& j) {
  if (j.is_number()) return j.get<double>();
  return std::nullopt;
}

/// "%.4g" of `v`.
inline std::string num(double v, const char* format = "%.4g") {
  char buf[48];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

}  // namespace detail

/// The record of a point file `doc` (see engine.hpp for its schema); `metric_key` names the metric.
inline RunRecord record_from_json(const nlohmann::json& doc, const std::string& metric_key) {
  const auto& s = doc.at("settings");
  const auto& r = doc.at("results");
  // Out-of-range or non-integer numbers must not reach get<int64_t/uint64_t>() (undefined
  // behaviour): an error instead, which the caller reports with the file's name.
  for (const char* k : {"seed", "rank"})
    if (s.contains(k) && !(s.at(k).is_number_unsigned() || (s.at(k).is_number_integer() && s.at(k).get<int64_t>() >= 0)))
      throw lora::Error(std::string("settings.") + k + " is " + s.at(k).dump() + ", not a non-negative integer");
  RunRecord rec;
  rec.key = doc.at("key").get<std::string>();
  rec.method = s.at("method").get<std::string>();
  rec.rank = s.value("rank", int64_t{0});
  rec.lr = s.at("lr").get<double>();
  rec.seed = s.at("seed").get<uint64_t>();
  rec.column = rec.method == "full" ? "full" : "lora_r" + std::to_string(rec.rank);
  rec.diverged = r.at("diverged").get<bool>();
  rec.metric = detail::optional_number(r.value(metric_key, nlohmann::json()));
  rec.best_val_loss = detail::optional_number(r.value("best_val_loss", nlohmann::json()));
  rec.doc = doc;
  return rec;
}

/// One LR of one run column: the values over seeds (diverged seeds left out).
struct Cell {
  double lr = 0;
  std::vector<double> values;
  int runs = 0;
  int diverged = 0;

  bool valid() const { return !values.empty(); }
  double mean() const { return mean_of(values); }
  /// Sample standard deviation (0 for one value).
  double stddev() const { return stddev_of(values); }
};

/// One line of the plot / column of the table: a run column's cells by ascending LR.
struct Curve {
  std::string column;  ///< "full" or "lora_r16"
  std::string label;   ///< "FullFT" or "r16"
  bool full = false;
  int64_t rank = 0;
  std::vector<Cell> cells;
};

/// The curves of `records` for the value `value_of` picks (empty optional: diverged or absent),
/// FullFT first, then ranks ascending.
inline std::vector<Curve> make_curves(const std::vector<RunRecord>& records,
                                      const std::function<std::optional<double>(const RunRecord&)>& value_of) {
  std::map<std::pair<int64_t, std::string>, Curve> by_column;  // full has rank 0: first
  for (const auto& rec : records) {
    auto& c = by_column[{rec.method == "full" ? 0 : rec.rank, rec.column}];
    c.column = rec.column;
    c.full = rec.method == "full";
    c.rank = rec.rank;
    c.label = c.full ? "FullFT" : "r" + std::to_string(rec.rank);
    auto it = std::find_if(c.cells.begin(), c.cells.end(), [&](const Cell& x) { return x.lr == rec.lr; });
    if (it == c.cells.end()) it = c.cells.insert(c.cells.end(), Cell{rec.lr, {}, 0, 0});
    ++it->runs;
    const auto v = value_of(rec);
    if (rec.diverged || !v) ++it->diverged;
    else it->values.push_back(*v);
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

namespace detail {

/// `v` as JSON: the number, or null.
inline nlohmann::json or_null(const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); }

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

/// The aggregate record of one (column, LR) over its seeds `runs` (see the header comment).
inline nlohmann::json aggregate(const std::vector<const RunRecord*>& runs, const Metric& metric,
                                const nlohmann::json& common) {
  nlohmann::json seeds = nlohmann::json::object();
  std::vector<double> metrics, vals;
  std::vector<std::vector<double>> train_lists, val_lists;
  int diverged = 0;
  for (const auto* r : runs) {
    const auto& res = r->doc.at("results");
    nlohmann::json own = nlohmann::json::object();
    for (const auto& [k, v] : r->doc.at("settings").items())
      if (!common.contains(k)) own[k] = v;
    seeds[std::to_string(r->seed)] = {
        {"key", r->key},
        {"best_val_loss", or_null(r->best_val_loss)},
        {metric.key, or_null(r->metric)},
        {"train_losses", res.at("train_losses")},
        {"val_losses", res.at("val_losses")},
        {"train_curve", res.value("train_curve", nlohmann::json())},
        {"diverged", r->diverged},
        {"diverged_reason", res.value("diverged_reason", nlohmann::json())},
        {"steps", res.at("steps")},
        {"wall_time_s", res.at("wall_time_s")},
        {"settings", own},
        {"environment", r->doc.value("environment", nlohmann::json::object())}};
    if (r->diverged || !r->metric) {
      ++diverged;
      continue;
    }
    metrics.push_back(*r->metric);
    if (r->best_val_loss) vals.push_back(*r->best_val_loss);
    train_lists.push_back(res.at("train_losses").get<std::vector<double>>());
    val_lists.push_back(res.at("val_losses").get<std::vector<double>>());
  }
  auto stats = [](const std::vector<double>& v) {
    Cell c;
    c.values = v;
    return c;
  };
  const Cell m = stats(metrics), bv = stats(vals);
  nlohmann::json out;
  if (runs.size() == 1) {  // the seed study's record, unchanged
    const auto& only = seeds.begin().value();
    for (const char* k : {"best_val_loss", "train_losses", "val_losses"}) out[k] = only.at(k);
    out[metric.key] = only.at(metric.key);
  } else {
    out["best_val_loss"] = bv.valid() ? nlohmann::json(bv.mean()) : nlohmann::json();
    out[metric.key] = m.valid() ? nlohmann::json(m.mean()) : nlohmann::json();
    out["train_losses"] = mean_lists(train_lists);
    out["val_losses"] = mean_lists(val_lists);
  }
  out["diverged"] = diverged == static_cast<int>(runs.size());
  out["n_seeds"] = runs.size();
  out["n_diverged"] = diverged;
  out[metric.key + "_std"] = m.values.size() >= 2 ? nlohmann::json(m.stddev()) : nlohmann::json();
  out["best_val_loss_std"] = bv.values.size() >= 2 ? nlohmann::json(bv.stddev()) : nlohmann::json();
  out["seeds"] = seeds;
  return out;
}

}  // namespace detail

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
    c.label = c.full ? "FullFT" : "r" + std::to_string(k.first);
    std::vector<std::vector<double>> losses;
    for (const auto* r : rs) {
      const auto& tc = r->doc.at("results").at("train_curve");
      const auto steps = tc.at("step").get<std::vector<int64_t>>();
      if (c.step.empty()) c.step = steps;
      if (steps != c.step) continue;
      losses.push_back(tc.at("loss").get<std::vector<double>>());
    }
    c.loss = detail::mean_lists(losses);
    if (!c.loss.empty()) out.push_back(std::move(c));
  }
  return out;
}

namespace detail {

/// An interval as JSON: n, geometric mean, 95% bounds, the sd of log10; null when absent.
inline nlohmann::json interval_json(const std::optional<Interval>& i) {
  if (!i) return nullptr;
  return {{"n", i->n}, {"geo_mean", i->mean}, {"lo", i->lo}, {"hi", i->hi}, {"sd_log10", i->sd},
          {"method", "Student t 95% interval of the mean of log10 over seeds"}};
}

}  // namespace detail

/// Per column: the best grid LR, the interpolated optimum and its ratio to FullFT's (of the
/// mean curve over seeds); with several seeds also each seed's own optimum and ratio, and
/// their 95% intervals ("seeds", "lr_interval", "lr_ratio_interval").
inline nlohmann::json optimum_json(const std::vector<Curve>& curves, const std::vector<Optimum>& optima,
                                   const SeedOptima& per_seed = {}) {
  nlohmann::json out = nlohmann::json::object();
  const Optimum* full = nullptr;
  for (size_t i = 0; i < curves.size(); ++i)
    if (curves[i].full && optima[i].found) full = &optima[i];
  for (size_t i = 0; i < curves.size(); ++i) {
    const auto& o = optima[i];
    if (!o.found) {
      out[curves[i].column] = {{"found", false}, {"note", o.note}};
      continue;
    }
    nlohmann::json j = {{"found", true},        {"grid_lr", o.grid_lr},           {"grid_value", o.grid_value},
                        {"lr", o.lr},           {"value", o.value},               {"interpolated", o.interpolated},
                        {"note", o.note}};
    const bool ratio = full && !curves[i].full;
    j["lr_ratio_to_full"] = ratio ? nlohmann::json(o.lr / full->lr) : nlohmann::json();
    j["grid_lr_ratio_to_full"] = ratio ? nlohmann::json(o.grid_lr / full->grid_lr) : nlohmann::json();
    if (per_seed.size() >= 2) {
      const auto spread = seed_spread(per_seed, curves[i].column);
      nlohmann::json seeds = nlohmann::json::object();
      for (const auto& [seed, so] : spread.optima) {
        const auto r = spread.ratios.find(seed);
        seeds[std::to_string(seed)] = {{"lr", so.lr},
                                       {"interpolated", so.interpolated},
                                       {"value", so.value},
                                       {"lr_ratio_to_full", r == spread.ratios.end() ? nlohmann::json() : nlohmann::json(r->second)}};
      }
      j["seeds"] = seeds;
      j["lr_interval"] = detail::interval_json(spread.lr);
      j["lr_ratio_interval"] = curves[i].full ? nlohmann::json() : detail::interval_json(spread.ratio);
      j["seeds_at_grid_point"] = spread.at_grid_point;
    }
    out[curves[i].column] = j;
  }
  return out;
}

/// The value of the task's metric / the best validation loss of a record.
inline std::function<std::optional<double>(const RunRecord&)> metric_of() {
  return [](const RunRecord& r) { return r.metric; };
}
inline std::function<std::optional<double>(const RunRecord&)> val_loss_of() {
  return [](const RunRecord& r) { return r.best_val_loss; };
}

/// results.json (see the header comment) of `records`; `missing` lists grid keys without a file.
inline nlohmann::json results_json(const std::string& task, const std::string& model, const Metric& metric,
                                   const std::vector<RunRecord>& records, const std::vector<std::string>& missing) {
  const auto common = common_settings(records);
  std::map<std::string, std::map<double, std::vector<const RunRecord*>>> grouped;
  std::set<uint64_t> seeds;
  for (const auto& r : records) {
    grouped[r.column][r.lr].push_back(&r);
    seeds.insert(r.seed);
  }
  nlohmann::json runs = nlohmann::json::object();
  for (const auto& [col, by_lr] : grouped)
    for (const auto& [lr, rs] : by_lr) runs[col][lr_string(lr)] = detail::aggregate(rs, metric, common);

  const auto metric_curves = make_curves(records, metric_of());
  const auto loss_curves = make_curves(records, val_loss_of());
  nlohmann::json columns = nlohmann::json::array();
  for (const auto& c : metric_curves) columns.push_back(c.column);
  return {{"schema", "lora-sweep-results/1"},
          {"task", task},
          {"model", model},
          {"metric", {{"key", metric.key}, {"label", metric.label}, {"higher_is_better", metric.higher_is_better}}},
          {"settings", common},
          {"columns", columns},
          {"seeds", seeds},
          {"runs", runs},
          {"optimum",
           {{metric.key, optimum_json(metric_curves, find_optima(metric_curves, metric.higher_is_better),
                                      seed_optima(records, metric_of(), metric.higher_is_better))},
            {"best_val_loss", optimum_json(loss_curves, find_optima(loss_curves, false),
                                           seed_optima(records, val_loss_of(), false))}}},
          {"missing", missing}};
}

namespace detail {

/// A table cell: "91.24", "91.2 ± 0.31", "diverged", "91.2 (1/3 diverged)", or "" when not run.
inline std::string cell_text(const Cell* c, bool best) {
  if (!c) return "";
  if (!c->valid()) return "diverged";
  std::string s = num(c->mean());
  if (c->values.size() >= 2) s += " ± " + num(c->stddev(), "%.2g");
  if (best) s = "**" + s + "**";
  if (c->diverged > 0) s += " (" + std::to_string(c->diverged) + "/" + std::to_string(c->runs) + " diverged)";
  return s;
}

/// "1.2e-05"-style LR for interpolated optima.
inline std::string lr_text(double lr) { return num(lr, "%.3g"); }

/// The table of `value_name` per LR (rows) and run (columns), best per column in bold.
inline std::string value_table(const std::vector<Curve>& curves, const std::vector<Optimum>& optima,
                               const std::string& value_name) {
  std::set<double> lrs;
  for (const auto& c : curves)
    for (const auto& cell : c.cells) lrs.insert(cell.lr);
  std::ostringstream s;
  s << "| LR \\ " << value_name << " |";
  for (const auto& c : curves) s << " " << c.label << " |";
  s << "\n|---|";
  for (size_t i = 0; i < curves.size(); ++i) s << "---|";
  s << "\n";
  for (const double lr : lrs) {
    s << "| " << lr_string(lr) << " |";
    for (size_t i = 0; i < curves.size(); ++i) {
      const auto& cells = curves[i].cells;
      const auto it = std::find_if(cells.begin(), cells.end(), [&](const Cell& c) { return c.lr == lr; });
      const Cell* cell = it == cells.end() ? nullptr : &*it;
      s << " " << cell_text(cell, cell && optima[i].found && optima[i].grid_lr == lr) << " |";
    }
    s << "\n";
  }
  return s.str();
}

/// "1.2e-03 [8.1e-04, 1.8e-03]": a geometric mean with its 95% interval.
inline std::string interval_text(const std::optional<Interval>& i, const char* format = "%.3g") {
  if (!i) return "-";
  return num(i->mean, format) + " [" + num(i->lo, format) + ", " + num(i->hi, format) + "]";
}

/// With several seeds: each seed's optimal LR and LoRA/FullFT ratio, and their 95% intervals.
inline std::string seeds_table(const std::vector<Curve>& curves, const SeedOptima& per_seed) {
  std::ostringstream s;
  s << "Over seeds (each seed's own curve, parabola in log10 LR; intervals: Student t 95% on log10 over seeds, "
       "shown as geometric mean [lo, hi]; * = that seed's optimum, or FullFT's, is a grid point):\n\n"
    << "| run | optimum LR per seed | optimum LR | LoRA/FullFT ratio per seed | ratio |\n|---|---|---|---|---|\n";
  for (const auto& c : curves) {
    const auto spread = seed_spread(per_seed, c.column);
    std::string lrs, ratios;
    for (const auto& [seed, o] : spread.optima) {
      lrs += (lrs.empty() ? "" : ", ") + lr_text(o.lr) + (o.interpolated ? "" : "*");
      const auto r = spread.ratios.find(seed);
      if (r != spread.ratios.end()) ratios += (ratios.empty() ? "" : ", ") + num(r->second, "%.3g");
    }
    s << "| " << c.label << " | " << (lrs.empty() ? "-" : lrs) << " | " << interval_text(spread.lr) << " | "
      << (ratios.empty() ? "-" : ratios) << " | " << (c.full ? "-" : interval_text(spread.ratio)) << " |\n";
  }
  s << "\n";
  return s.str();
}

/// The optimum table, the ratio line and the notes for one value.
inline std::string optimum_section(const std::vector<Curve>& curves, const std::vector<Optimum>& optima,
                                   const std::string& value_name, const SeedOptima& per_seed = {}) {
  const Optimum* full = nullptr;
  for (size_t i = 0; i < curves.size(); ++i)
    if (curves[i].full && optima[i].found) full = &optima[i];
  std::ostringstream s, ratios, notes;
  s << "| run | best LR (grid) | " << value_name << " there | optimum LR (parabola in log10 LR) | LoRA/FullFT LR ratio |\n"
    << "|---|---|---|---|---|\n";
  for (size_t i = 0; i < curves.size(); ++i) {
    const auto& o = optima[i];
    const auto& c = curves[i];
    if (!o.found) {
      s << "| " << c.label << " | - | diverged | - | - |\n";
      notes << "- " << c.label << ": " << o.note << ".\n";
      continue;
    }
    std::string ratio = "-";
    if (full && !c.full) {
      ratio = num(o.lr / full->lr, "%.3g") + "x (grid " + num(o.grid_lr / full->grid_lr, "%.3g") + "x)";
      ratios << (ratios.tellp() > 0 ? ", " : "") << c.label << " " << num(o.lr / full->lr, "%.3g") << "x"
             << (o.interpolated && full->interpolated ? "" : " (from grid points, see notes)");
    }
    s << "| " << c.label << " | " << lr_string(o.grid_lr) << " | " << num(o.grid_value) << " | " << lr_text(o.lr)
      << (o.interpolated ? "" : " (grid point)") << " | " << ratio << " |\n";
    if (!o.interpolated) notes << "- " << c.label << ": " << o.note << ".\n";
  }
  s << "\n";
  if (per_seed.size() >= 2) s << seeds_table(curves, per_seed);
  if (!full) s << "LoRA/FullFT ratio of optimal LRs by " << value_name << ": no FullFT result to compare with.\n";
  else if (ratios.tellp() > 0) s << "LoRA/FullFT ratio of optimal LRs by " << value_name << ": " << ratios.str() << ".\n";
  else s << "LoRA/FullFT ratio of optimal LRs by " << value_name << ": no LoRA result to compare with.\n";
  if (notes.tellp() > 0) s << "\nNotes:\n" << notes.str();
  return s.str();
}

/// "key value, key value" for the scalar and list common settings.
inline std::string settings_line(const nlohmann::json& common) {
  std::string s;
  for (const auto& [k, v] : common.items()) {
    if (v.is_object()) continue;
    s += (s.empty() ? "" : ", ") + k + " " + (v.is_string() ? v.get<std::string>() : v.dump());
  }
  return s;
}

}  // namespace detail

/// summary.md: per value (the metric, then the best validation loss) the table per LR and run,
/// the optimal LR per run and the LoRA/FullFT ratios; then the missing points.
inline std::string summary_markdown(const std::string& task, const std::string& model, const Metric& metric,
                                    const std::vector<RunRecord>& records, const std::vector<std::string>& missing) {
  std::set<uint64_t> seeds;
  for (const auto& r : records) seeds.insert(r.seed);
  std::ostringstream s;
  s << "# LR sweep: " << task << " (" << model << ")\n\n"
    << records.size() << " runs, seed" << (seeds.size() > 1 ? "s " : " ");
  std::string sep;
  for (const auto seed : seeds) s << sep << seed, sep = " ";
  if (seeds.size() > 1) s << " (mean ± sample std over seeds)";
  s << ". Settings shared by every run: " << detail::settings_line(common_settings(records)) << ".\n";

  struct Section {
    std::string name, title;
    bool higher;
    std::function<std::optional<double>(const RunRecord&)> value;
  };
  for (const auto& sec : {Section{metric.key, metric.label, metric.higher_is_better, metric_of()},
                          Section{"best_val_loss", "best validation loss", false, val_loss_of()}}) {
    const auto curves = make_curves(records, sec.value);
    const auto optima = find_optima(curves, sec.higher);
    s << "\n## " << sec.title << " (" << sec.name << ", " << (sec.higher ? "higher" : "lower") << " is better)\n\n"
      << detail::value_table(curves, optima, sec.name) << "\n### Optimal LR by " << sec.name << "\n\n"
      << detail::optimum_section(curves, optima, sec.name, seed_optima(records, sec.value, sec.higher));
  }
  if (!missing.empty()) {
    s << "\n## Missing points (" << missing.size() << ")\n\n";
    for (const auto& k : missing) s << "- " << k << "\n";
  }
  return s.str();
}

}  // namespace sweep

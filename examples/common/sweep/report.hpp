// The sweep's report: results.json, summary.md, plot.svg (and plot.png when a converter is
// installed) and curves/lr<LR>.svg, made from the grid's finished point files (point.hpp) by the
// analysis (analysis.hpp, robust.hpp); the plots are drawn by plot.hpp. Written after a sweep and
// by --merge (write_report() at the bottom); each file atomically.
//
// summary.md: per value (the task's metric, then the best validation loss) the table of that
// value per LR and run, the optimal LR per run (interpolated in log10(LR)) and the LoRA/FullFT
// ratio of optimal LRs, with the spread over seeds when several ran; then the missing points.
//
// results.json: the seed study's schema inside a document that records every setting.
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
//         "n_seeds": 1, "n_diverged": 0, "n_collapsed": 0,   // collapsed: the task's CollapseRule
//         "test_acc_std": null, "best_val_loss_std": null,   // sample std over seeds (n >= 2)
//         "seeds": {"42": {       // each seed's own record
//           "key": "lora_r16_lr1e-04_s42", "best_val_loss": ..., "test_acc": ..., "train_losses": [...],
//           "val_losses": [...], "diverged": false, "diverged_reason": null, "collapsed": false, "steps": 1565,
//           "wall_time_s": 812.3,
//           "settings": {...},    // the settings of this run NOT in the top-level "settings"
//           "environment": {...}  // host, device, versions, paths, command line
//         }}
//       }
//     }
//   },
//   "optimum": {"test_acc": {...}, "best_val_loss": {...}},  // per column, see optimum_json()
//   "robust": {"test_acc": {...}, "best_val_loss": {...}},   // the second round's estimators, robust_json()
//   "missing": ["<key>", ...]     // grid points without a result yet
// }
// A run's full settings are the top-level "settings" plus its own "settings": no number is
// ambiguous. Metric values are null when the run diverged.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "analysis.hpp"
#include "cli.hpp"
#include "grid.hpp"
#include "plot.hpp"
#include "point.hpp"
#include "robust.hpp"
#include "task.hpp"

namespace sweep {

// ---------------------------------------------------------------------------------------------
// results.json

namespace detail {

/// `v` as JSON: the number, or null.
inline nlohmann::json or_null(const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(); }

/// The aggregate record of one (column, LR) over its seeds `runs` (see the header comment).
inline nlohmann::json aggregate(const std::vector<const RunRecord*>& runs, const Metric& metric,
                                const nlohmann::json& common) {
  nlohmann::json seeds = nlohmann::json::object();
  std::vector<double> metrics, vals;
  std::vector<std::vector<double>> train_lists, val_lists;
  int diverged = 0, collapsed = 0;
  for (const auto* r : runs) {
    collapsed += r->collapsed;
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
        {"collapsed", r->collapsed},
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
  out["n_collapsed"] = collapsed;
  out[metric.key + "_std"] = m.values.size() >= 2 ? nlohmann::json(m.stddev()) : nlohmann::json();
  out["best_val_loss_std"] = bv.values.size() >= 2 ? nlohmann::json(bv.stddev()) : nlohmann::json();
  out["seeds"] = seeds;
  return out;
}

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
inline nlohmann::json optimum_json(const Analysis& a) {
  const auto& curves = a.curves;
  const auto& optima = a.optima;
  nlohmann::json out = nlohmann::json::object();
  const Optimum* full = full_optimum(curves, optima);
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
    if (a.per_seed.size() >= 2) {
      const auto spread = seed_spread(a.per_seed, curves[i].column);
      nlohmann::json seeds = nlohmann::json::object();
      for (const auto& [seed, so] : spread.optima) {
        const auto r = spread.ratios.find(seed);
        seeds[std::to_string(seed)] = {{"lr", so.lr},
                                       {"interpolated", so.interpolated},
                                       {"value", so.value},
                                       {"lr_ratio_to_full", r == spread.ratios.end() ? nlohmann::json()
                                                                                     : nlohmann::json(r->second)}};
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

namespace detail {

inline nlohmann::json fit_json(const FitOptimum& f) {
  if (!f.found) return {{"found", false}, {"note", f.note}};
  return {{"found", true}, {"best_lr", f.best_lr}, {"best_value", f.best_value}, {"lr", f.lr}, {"value", f.value},
          {"interpolated", f.interpolated}, {"runs", f.runs}, {"lrs", f.lrs}, {"note", f.note}};
}

inline nlohmann::json slope_json(const std::optional<Slope>& s) {
  if (!s) return nullptr;
  return {{"n", s->n}, {"slope", s->slope}, {"intercept", s->intercept}, {"lo", s->lo}, {"hi", s->hi},
          {"method", "least squares of log10(LR) on log10(scale), Student t 95% interval of the slope"}};
}

template <typename Map, typename Fn>
nlohmann::json by_seed_json(const Map& m, const Fn& fn) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [seed, v] : m) j[std::to_string(seed)] = fn(v);
  return j;
}

}  // namespace detail

/// The second round's estimators (robust.hpp) of one measure: per column the pooled fit, each
/// seed's fit, edge and ratios with their intervals; the slopes against the scale.
inline nlohmann::json robust_json(const RobustAnalysis& r) {
  using detail::by_seed_json;
  using detail::interval_json;
  const auto number = [](double v) { return nlohmann::json(v); };
  nlohmann::json columns = nlohmann::json::object();
  for (const auto& c : r.columns) {
    columns[c.column] = {
        {"runs", c.runs},
        {"collapsed", c.collapsed},
        {"scale", std::isfinite(c.scale) ? nlohmann::json(c.scale) : nlohmann::json()},
        {"pooled", detail::fit_json(c.pooled)},
        {"seeds", by_seed_json(c.seeds, detail::fit_json)},
        {"edges", by_seed_json(c.edges,
                               [](const Edge& e) {
                                 return e.found ? nlohmann::json{{"lr", e.lr}, {"first_collapsed_lr", e.collapsed_lr}}
                                                : nlohmann::json{{"lr", nullptr}, {"note", e.note}};
                               })},
        {"lr_ratio_to_full", by_seed_json(c.ratios, number)},
        {"edge_ratio_to_full", by_seed_json(c.edge_ratios, number)},
        {"paired_to", c.paired_to.empty() ? nlohmann::json() : nlohmann::json(c.paired_to)},
        {"paired_lr_ratio", by_seed_json(c.paired, number)},
        {"lr_interval", interval_json(c.lr)},
        {"lr_ratio_interval", interval_json(c.ratio)},
        {"edge_interval", interval_json(c.edge)},
        {"edge_ratio_interval", interval_json(c.edge_ratio)},
        {"paired_lr_ratio_interval", interval_json(c.paired_ratio)}};
  }
  return {{"collapse_rule", r.rule},
          {"fit", "least-squares quadratic in log10(LR) on the runs that did not collapse within half a decade of "
                  "the best LR"},
          {"columns", columns},
          {"scales", r.scales},
          {"optimum_slope_vs_scale", detail::slope_json(r.optimum_slope)},
          {"edge_slope_vs_scale", detail::slope_json(r.edge_slope)}};
}

/// results.json (see the header comment) of `records` (marked by mark_collapsed() with the
/// rule `collapse_rule` describes); `missing` lists grid keys without a file.
inline nlohmann::json results_json(const std::string& task, const std::string& model, const Metric& metric,
                                   const std::vector<RunRecord>& records, const std::vector<std::string>& missing,
                                   const std::string& collapse_rule = "") {
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

  std::vector<Analysis> analyses;
  for (const auto& m : measures(metric)) analyses.push_back(analyse(records, m));
  nlohmann::json columns = nlohmann::json::array(), optimum = nlohmann::json::object(),
                 robust = nlohmann::json::object();
  for (const auto& c : analyses.front().curves) columns.push_back(c.column);  // the metric's: display order
  for (const auto& a : analyses) {
    optimum[a.measure.metric.key] = optimum_json(a);
    robust[a.measure.metric.key] = robust_json(robust_analysis(records, a.measure, a.curves, collapse_rule));
  }
  return {{"schema", "lora-sweep-results/1"},
          {"task", task},
          {"model", model},
          {"metric", {{"key", metric.key}, {"label", metric.label}, {"higher_is_better", metric.higher_is_better}}},
          {"settings", common},
          {"columns", columns},
          {"seeds", seeds},
          {"runs", runs},
          {"optimum", optimum},
          {"robust", robust},
          {"missing", missing}};
}

// ---------------------------------------------------------------------------------------------
// summary.md

namespace detail {

/// A table cell: "91.24", "91.2 ± 0.31", "diverged", "91.2 (1/3 diverged)", "25 ± 0 (3/3
/// collapsed)", or "" when not run.
inline std::string cell_text(const Cell* c, bool best) {
  if (!c) return "";
  if (!c->valid()) return "diverged";
  std::string s = num(c->mean());
  if (c->values.size() >= 2) s += " ± " + num(c->stddev(), "%.2g");
  if (best) s = "**" + s + "**";
  if (c->diverged > 0) s += " (" + std::to_string(c->diverged) + "/" + std::to_string(c->runs) + " diverged)";
  if (c->collapsed > 0) s += " (" + std::to_string(c->collapsed) + "/" + std::to_string(c->runs) + " collapsed)";
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
  const Optimum* full = full_optimum(curves, optima);
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

/// "0.0012*" per seed, "*" marking a value that was not interpolated; `text` renders one value.
template <typename Map, typename Text>
std::string per_seed_text(const Map& by_seed, const Text& text) {
  std::string s;
  for (const auto& [seed, v] : by_seed) s += (s.empty() ? "" : ", ") + text(v);
  return s.empty() ? "-" : s;
}

/// The second round's estimators (robust.hpp) for one value: the optimum fitted without
/// collapsed runs, the stability edge, the ratios within seed, the slope against the scale.
inline std::string robust_section(const RobustAnalysis& r, const std::string& value_name, bool several_seeds) {
  std::ostringstream s;
  s << "### Optimum without collapsed runs, and the stability edge\n\n"
    << "Collapsed: " << (r.rule.empty() ? "a run that diverged" : r.rule + ", or diverged") << ". Optimum: a "
    << "least-squares quadratic in log10 LR" << " on every run that did not collapse within half a decade of the "
    << "best LR (pooled: every seed's runs around the best of their mean; per seed: that seed's runs); * = not "
    << "interpolated (see notes). Stability edge: per seed, the largest LR that did not collapse below the first "
    << "LR above the best that did. Intervals: Student t 95% on log10 over seeds, geometric mean [lo, hi].\n\n";
  std::ostringstream notes;
  const auto opt_text = [](const FitOptimum& f) { return lr_text(f.lr) + (f.interpolated ? "" : "*"); };
  const auto num3 = [](double v) { return num(v, "%.3g"); };
  s << "| run | collapsed runs | optimum LR (pooled fit) | " << value_name << " there | optimum LR per seed | "
    << "optimum LR | LoRA/FullFT ratio per seed | ratio |\n|---|---|---|---|---|---|---|---|\n";
  for (const auto& c : r.columns) {
    s << "| " << c.label << " | " << c.collapsed << "/" << c.runs << " | "
      << (c.pooled.found ? opt_text(c.pooled) : "-") << " | " << (c.pooled.found ? num(c.pooled.value) : "-")
      << " | " << per_seed_text(c.seeds, opt_text) << " | " << interval_text(c.lr) << " | "
      << (c.full ? "-" : per_seed_text(c.ratios, num3)) << " | " << (c.full ? "-" : interval_text(c.ratio)) << " |\n";
    if (!c.pooled.interpolated) notes << "- " << c.label << " (pooled): " << c.pooled.note << ".\n";
    for (const auto& [seed, f] : c.seeds)
      if (!f.interpolated) notes << "- " << c.label << ", seed " << seed << ": " << f.note << ".\n";
  }
  s << "\n| run | stability edge per seed (first collapse) | edge | LoRA/FullFT edge ratio per seed | edge ratio |\n"
    << "|---|---|---|---|---|\n";
  for (const auto& c : r.columns) {
    const auto edge_text = [](const Edge& e) {
      return e.found ? lr_text(e.lr) + " (" + lr_text(e.collapsed_lr) + ")" : std::string("none");
    };
    s << "| " << c.label << " | " << per_seed_text(c.edges, edge_text) << " | " << interval_text(c.edge) << " | "
      << (c.full ? "-" : per_seed_text(c.edge_ratios, num3)) << " | " << (c.full ? "-" : interval_text(c.edge_ratio))
      << " |\n";
  }
  bool paired = false;
  for (const auto& c : r.columns) paired = paired || !c.paired.empty();
  if (paired && several_seeds) {
    s << "\nWithin seed, each LoRA line's optimum over the first LoRA line's (FullFT's noise drops out):\n\n"
      << "| run | ratio per seed | ratio |\n|---|---|---|\n";
    for (const auto& c : r.columns)
      if (!c.paired_to.empty())
        s << "| " << c.label << " / " << c.paired_to << " | " << per_seed_text(c.paired, num3) << " | "
          << interval_text(c.paired_ratio) << " |\n";
  }
  if (r.scales >= 2) {
    const auto slope_text = [](const std::optional<Slope>& sl) {
      if (!sl) return std::string("- (fewer than 3 values)");
      return num(sl->slope, "%.3g") + " [" + num(sl->lo, "%.3g") + ", " + num(sl->hi, "%.3g") + "] (n = " +
             std::to_string(sl->n) + ")";
    };
    s << "\nAgainst the scale s (" << r.scales << " scales; each seed's value of each LoRA line, least squares in "
      << "log10-log10, Student t 95% on the slope): optimum LR slope " << slope_text(r.optimum_slope)
      << "; stability edge slope " << slope_text(r.edge_slope) << ". A slope of -1 means the LR follows 1/s, 0 "
      << "that it does not depend on s.\n";
  }
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

/// summary.md (see the header comment) of `records` (marked by mark_collapsed() with the rule
/// `collapse_rule` describes); `missing` lists grid keys without a file.
inline std::string summary_markdown(const std::string& task, const std::string& model, const Metric& metric,
                                    const std::vector<RunRecord>& records, const std::vector<std::string>& missing,
                                    const std::string& collapse_rule = "") {
  std::set<uint64_t> seeds;
  for (const auto& r : records) seeds.insert(r.seed);
  std::ostringstream s;
  s << "# LR sweep: " << task << " (" << model << ")\n\n"
    << records.size() << " runs, seed" << (seeds.size() > 1 ? "s " : " ");
  std::string sep;
  for (const auto seed : seeds) s << sep << seed, sep = " ";
  if (seeds.size() > 1) s << " (mean ± sample std over seeds)";
  s << ". Settings shared by every run: " << detail::settings_line(common_settings(records)) << ".\n";

  for (const auto& m : measures(metric)) {
    const auto a = analyse(records, m);
    const auto& v = m.metric;
    s << "\n## " << v.label << " (" << v.key << ", " << (v.higher_is_better ? "higher" : "lower") << " is better)\n\n"
      << detail::value_table(a.curves, a.optima, v.key) << "\n### Optimal LR by " << v.key << "\n\n"
      << detail::optimum_section(a.curves, a.optima, v.key, a.per_seed) << "\n"
      << detail::robust_section(robust_analysis(records, m, a.curves, collapse_rule), v.key, seeds.size() >= 2);
  }
  if (!missing.empty()) {
    s << "\n## Missing points (" << missing.size() << ")\n\n";
    for (const auto& k : missing) s << "- " << k << "\n";
  }
  return s.str();
}

// ---------------------------------------------------------------------------------------------
// Writing the report files

namespace detail {

/// Writes results.json, summary.md and plot.svg/png from the grid's finished points; prints
/// the summary. Returns false (writing nothing) when no point is finished.
inline bool write_report(const Options& o, Task& task, const std::vector<Point>& grid, std::ostream& out,
                         bool render_png) {
  std::vector<RunRecord> records;
  std::vector<std::string> missing;
  std::set<std::string> grid_files;
  for (const auto& p : grid) {
    grid_files.insert(key(p) + ".json");
    if (auto r = load_done(o, task, p)) records.push_back(std::move(*r));
    else missing.push_back(key(p));
  }
  std::error_code ec;
  size_t others = 0;
  if (fs::is_directory(points_dir(o), ec))
    for (const auto& e : fs::directory_iterator(points_dir(o), ec))
      others += e.path().extension() == ".json" && !grid_files.count(e.path().filename().string());
  if (others > 0)
    out << "note: " << others << " point file(s) in " << points_dir(o).string()
        << " are not in this grid and were left out; give the same grid flags as the runs that made them.\n";
  if (records.empty()) return false;
  const auto rule = task.collapse_rule();
  mark_collapsed(records, rule);

  const fs::path dir(o.out);
  remove_stale_tmp(dir, {"results.json", "summary.md", "plot.svg", "scale.svg"});
  const auto metric = task.metric();
  write_atomic(dir / "results.json", results_json(task.name(), task.model_name(), metric, records, missing, rule.description).dump(2) + "\n");
  const auto summary = summary_markdown(task.name(), task.model_name(), metric, records, missing, rule.description);
  write_atomic(dir / "summary.md", summary);
  const auto a = analyse(records, measures(metric).front());
  const auto robust = robust_analysis(records, a.measure, a.curves, rule.description);
  std::vector<FitOptimum> fits;
  for (const auto& c : robust.columns) fits.push_back(c.pooled);
  write_atomic(dir / "plot.svg", plot_svg(a.curves, a.optima, metric.label,
                                          task.name() + " (" + task.model_name() + "): " + metric.label + " vs LR",
                                          metric.log_scale, fits));
  // The optimum and the edge against the scale, when the LoRA lines have several (--alphas).
  if (robust.scales >= 2)
    write_atomic(dir / "scale.svg", scale_svg(robust, task.name() + ": optimal LR (by " + metric.key +
                                                          ") and stability edge vs LoRA's scale"));
  // Training-loss curves, every run at each LR that two or more runs share.
  std::map<double, int> runs_at;
  for (const auto& c : a.curves)
    for (const auto& cell : c.cells) ++runs_at[cell.lr];
  for (const auto& [lr, n] : runs_at) {
    if (n < 2) continue;
    const auto lc = loss_curves_at(records, lr);
    if (lc.size() < 2) continue;
    fs::create_directories(dir / "curves");
    write_atomic(dir / "curves" / ("lr" + lr_key(lr) + ".svg"),
                 loss_curves_svg(lc, task.name() + ": training loss at LR " + lr_string(lr)));
  }
  out << "\n" << summary << "\n";
  out << "wrote " << (dir / "results.json").string() << ", " << (dir / "summary.md").string() << ", "
      << (dir / "plot.svg").string() << "\n";
  if (render_png) out << sweep::render_png((dir / "plot.svg").string(), (dir / "plot.png").string()) << "\n";
  if (!missing.empty()) out << missing.size() << " of " << grid.size() << " grid points have no result yet.\n";
  return true;
}

}  // namespace detail

}  // namespace sweep

// results.json: the seed study's schema inside a document that records every setting, built
// from the point files' records and their analysis (analysis.hpp).
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

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "analysis.hpp"
#include "grid.hpp"
#include "robust.hpp"
#include "stats.hpp"

namespace sweep {

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

}  // namespace sweep

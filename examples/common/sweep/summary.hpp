// summary.md: per value (the task's metric, then the best validation loss) the table of that
// value per LR and run, the optimal LR per run (interpolated in log10(LR)) and the LoRA/FullFT
// ratio of optimal LRs, with the spread over seeds when several ran; then the missing points.
// Built from the point files' records and their analysis (analysis.hpp).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "analysis.hpp"
#include "grid.hpp"
#include "robust.hpp"
#include "stats.hpp"

namespace sweep {

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

}  // namespace sweep

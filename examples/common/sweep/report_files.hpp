// The sweep's report files: results.json, summary.md, plot.svg (and plot.png when a converter
// is installed) and curves/lr<LR>.svg, made from the grid's finished point files
// (point_file.hpp) by the analysis (analysis.hpp) and its renderings (results_json.hpp,
// summary.hpp, plot.hpp). Written after a sweep and by --merge; each file atomically.
#pragma once

#include <filesystem>
#include <map>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "analysis.hpp"
#include "grid.hpp"
#include "options.hpp"
#include "plot.hpp"
#include "png.hpp"
#include "point_file.hpp"
#include "results_json.hpp"
#include "robust.hpp"
#include "summary.hpp"
#include "task.hpp"

namespace sweep {
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

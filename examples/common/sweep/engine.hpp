// The sweep engine: runs the points of this shard that are not done yet, writes each one to
// out/points/<key>.json atomically the moment it finishes, and turns the point files into
// results.json, summary.md and plot.svg/png (analysis.hpp, results_json.hpp, summary.hpp,
// plot.hpp). Model-independent: a program supplies a Task (its model, data, loss and metric)
// and calls program_main().
//
// A point file (out/points/<key>.json):
// {
//   "schema": "lora-sweep-point/1", "key": "lora_r16_lr1e-04_s42", "column": "lora_r16",
//   "lr_string": "0.0001", "metric": {"key": "test_acc", "label": ..., "higher_is_better": true},
//   "settings": {           // what determines the numbers; a rerun must match it exactly
//     "task", "model", "method", "lr", "seed", "epochs", "batch_size", "train_size", "val_size",
//     "max_len", "optimizer": {...}, "extra": {...},
//     LoRA only: "rank", "alpha", "alpha_per_rank", "scale", "scaling", "init", ["init_std"],
//     "targets", "loraplus_ratio", "dora"
//   },
//   "environment": {        // where and when it ran
//     "hostname", "device", "threads", "lora_version", "libtorch_version", "model_dir",
//     "data_dir", "command_line", "finished_at"
//   },
//   "results": {"best_val_loss", "<metric key>", "train_losses", "val_losses",
//               "train_curve": {"every", "step": [...], "loss": [...]},  // mean loss every few steps
//               "diverged", "diverged_reason", "steps", "trainable_parameters", "wall_time_s"}
// }
// Resuming: a point whose file exists is done and skipped; its settings must equal this
// run's, or the sweep stops rather than mix two experiments in one --out. A file that does not
// parse stops the sweep too, naming it (never overwritten, never counted as done).
// A point trains only while this process holds its claim (out/locks/<key>.lock, claim.hpp),
// so two processes on one --out never train the same point; a leftover "<key>.json.tmp.<pid>"
// (a process killed while writing) is removed once the point is claimed. A NaN or infinite
// loss marks the point diverged; the sweep goes on.
#pragma once

#include <unistd.h>

#include <torch/utils.h>
#include <torch/version.h>

#include <lora/inject.hpp>
#include <lora/io.hpp>
#include <lora/version.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "perf/allocator.hpp"
#include "perf/blas.hpp"
#include "error_message.hpp"
#include "errors.hpp"

#include "analysis.hpp"
#include "claim.hpp"
#include "cli.hpp"
#include "grid.hpp"
#include "jobs.hpp"
#include "options.hpp"
#include "plot.hpp"
#include "point_config.hpp"
#include "progress.hpp"
#include "results_json.hpp"
#include "summary.hpp"
#include "train.hpp"

namespace sweep {

namespace fs = std::filesystem;

/// What a program supplies: identity, data, and a fresh model per point. The program builds it
/// from the parsed Options (keep the constructor cheap: load data in prepare()).
class Task {
 public:
  virtual ~Task() = default;
  /// Recorded in every output, e.g. "agnews".
  virtual std::string name() const = 0;
  /// The base model, e.g. "distilbert-base-uncased".
  virtual std::string model_name() const = 0;
  /// The headline number: key ("test_acc" / "test_ppl"), label, direction.
  virtual Metric metric() const = 0;
  /// Optimizer steps per epoch, without loading data (for --dry-run and the progress bar).
  virtual int64_t steps_per_epoch() const = 0;
  /// A rough training speed of `p` on the chosen device, for --dry-run; 0: unknown.
  virtual double steps_per_second(const Point& p) const {
    (void)p;
    return 0;
  }
  /// Loads data once, before the first run (not called by --dry-run or --merge). Missing files
  /// should be reported here, all at once, before any training.
  virtual void prepare() {}
  /// A fresh model with the base weights for point `p`. The engine has just seeded torch with
  /// p.seed (so a newly initialised head is reproducible); it then moves the module to the
  /// device and injects LoRA (LoRA points) or trains every parameter (FullFT).
  virtual Model make_model(const Point& p) = 0;
  /// The training batches of `epoch` (from 0) in order, on the CPU; shuffle with p.seed and epoch.
  virtual std::vector<Batch> train_batches(int64_t epoch, const Point& p) = 0;
};

/// In-process control, for tests and embedding programs.
struct EngineHooks {
  /// Called after each point's file is written; return false to stop the sweep there.
  std::function<bool(const RunRecord&)> after_point;
  bool render_png = true;            ///< try rsvg-convert / convert for plot.png
  std::ostream* out = &std::cout;    ///< grid listing, summary, final messages
  std::ostream* log = &std::cerr;    ///< progress bar and per-point lines
  std::optional<bool> terminal;      ///< progress redraws in place; default: stderr is a terminal
  int64_t log_every = 5;             ///< read the loss (progress, train-loss curve) every this many steps
};

/// What run_sweep() did.
struct SweepOutcome {
  size_t grid = 0;      ///< points in the whole grid
  size_t selected = 0;  ///< points of this shard
  size_t skipped = 0;   ///< already done before this run
  size_t ran = 0;       ///< run now
  size_t diverged = 0;  ///< of those, diverged
  bool complete = false;  ///< every point of this shard is done
  bool reported = false;  ///< results.json, summary.md and the plot were written
};

namespace detail {

/// Writes `content` to `path` atomically (lora::write_text_atomic: "<path>.tmp.<pid>", fsync,
/// rename, fsync of the folder), so readers see the old file or the whole new one, never a part.
/// Its errors become examples::FileError, pointing at --out.
inline void write_atomic(const fs::path& path, const std::string& content) {
  try {
    lora::write_text_atomic(path.string(), content);
  } catch (const lora::FileError& e) {
    throw examples::FileError(std::string(e.what()) + ". Check the space and permissions of --out.");
  }
}

/// The JSON in `path`, or nothing when it cannot be read or parsed.
inline std::optional<nlohmann::json> read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

/// Removes "<name>.tmp.<pid>" files left in `dir` by killed processes, for each of `names`.
inline size_t remove_stale_tmp(const fs::path& dir, const std::set<std::string>& names) {
  size_t removed = 0;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const auto file = entry.path().filename().string();
    const auto at = file.find(".tmp.");
    if (at != std::string::npos && names.count(file.substr(0, at)) && fs::remove(entry.path(), ec)) ++removed;
  }
  return removed;
}

inline std::string hostname() {
  char buf[256] = {};
  return ::gethostname(buf, sizeof buf - 1) == 0 ? buf : "unknown";
}

/// Now, as "2025-01-31T12:34:56Z".
inline std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

inline std::string libtorch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

inline fs::path points_dir(const Options& o) { return fs::path(o.out) / "points"; }
inline fs::path point_path(const Options& o, const Point& p) { return points_dir(o) / (key(p) + ".json"); }
inline fs::path locks_dir(const Options& o) { return fs::path(o.out) / "locks"; }
inline fs::path lock_path(const Options& o, const Point& p) { return locks_dir(o) / (key(p) + ".lock"); }

/// The settings that determine point `p`'s numbers (see the header comment).
inline nlohmann::json point_settings(const Options& o, const Task& task, const Point& p) {
  const TrainSettings t;  // run_point trains with these optimizer settings: record what it uses
  nlohmann::json s = {{"task", task.name()},
                      {"model", task.model_name()},
                      {"method", p.method},
                      {"lr", p.lr},
                      {"seed", p.seed},
                      {"epochs", o.epochs},
                      {"batch_size", o.batch_size},
                      {"train_size", o.train_size},
                      {"val_size", o.val_size},
                      {"max_len", o.max_len},
                      {"optimizer",
                       {{"name", "AdamW"}, {"betas", {t.beta1, t.beta2}}, {"eps", t.eps}, {"weight_decay", t.weight_decay},
                        {"schedule", "constant"}, {"warmup_steps", 0}, {"grad_clip", nullptr}}},
                      {"extra", p.extra}};
  if (p.is_full()) return s;
  s["rank"] = p.rank;
  s["alpha"] = p.alpha;
  s["alpha_per_rank"] = o.alpha_per_rank > 0 ? nlohmann::json(o.alpha_per_rank) : nlohmann::json();
  s["scale"] = scaling_policy(p.scaling).scale(p.alpha, p.rank);
  s["scaling"] = p.scaling;
  s["init"] = p.init;
  if (p.init == "gaussian-gaussian") s["init_std"] = o.init_std;
  s["targets"] = o.targets;
  s["loraplus_ratio"] = o.loraplus_ratio;
  s["dora"] = o.dora;
  return s;
}

/// Where and when this process runs.
inline nlohmann::json environment(const Options& o) {
  return {{"hostname", hostname()},
          {"device", o.device},
          {"threads", torch::get_num_threads()},
          {"lora_version", lora::version()},
          {"libtorch_version", libtorch_version()},
          {"model_dir", o.model_dir},
          {"data_dir", o.data_dir},
          {"command_line", o.command_line},
          {"finished_at", utc_now()}};
}

/// The names of the settings that differ between `a` and `b`, with both values.
inline std::string settings_diff(const nlohmann::json& here, const nlohmann::json& there) {
  std::string out;
  auto add = [&](const std::string& k) {
    out += (out.empty() ? "" : "; ") + k + ": " + (here.contains(k) ? here.at(k).dump() : "absent") + " now, " +
           (there.contains(k) ? there.at(k).dump() : "absent") + " in the file";
  };
  for (const auto& [k, v] : here.items())
    if (!there.contains(k) || there.at(k) != v) add(k);
  for (const auto& [k, v] : there.items())
    if (!here.contains(k)) add(k);
  return out;
}

/// The finished record of `p` in --out, if any. Throws when it was made with other settings,
/// and when it does not parse as a point file (the engine writes whole files only, so such a
/// file was truncated or edited elsewhere: it is neither counted as done nor overwritten).
inline std::optional<RunRecord> load_done(const Options& o, const Task& task, const Point& p) {
  const auto path = point_path(o, p);
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::nullopt;
  const auto doc = read_json(path);
  const auto refuse = [&](const std::string& why) {
    return examples::FileError("'" + path.string() + "' is not a valid point file (" + why +
                           "): truncated or edited by hand? The sweep neither counts it as done nor overwrites it. "
                           "Move it out of " + points_dir(o).string() + " to rerun point " + key(p) +
                           ", or restore it from version control.");
  };
  if (!doc) throw refuse("not valid JSON");
  if (!doc->contains("settings") || !doc->contains("results")) throw refuse("no \"settings\" or \"results\"");
  const auto expected = point_settings(o, task, p);
  if (doc->at("settings") != expected)
    throw examples::Error("'" + path.string() + "' holds point " + key(p) + " made with other settings (" +
                          settings_diff(expected, doc->at("settings")) +
                          "). Use another --out for this experiment, or delete the file to rerun the point.");
  try {
    return record_from_json(*doc, task.metric().key);
  } catch (const std::exception& e) {  // nlohmann::json::exception, or examples::DataError for bad numbers
    throw refuse(std::string("a field is missing or of the wrong type: ") + e.what());
  }
}

/// Trains point `p` and writes its file; returns its record.
inline RunRecord run_point(const Options& o, Task& task, const Point& p, torch::Device device, Reporter& progress,
                           int64_t log_every) {
  const auto start = std::chrono::steady_clock::now();
  torch::manual_seed(p.seed);
  Model model = task.make_model(p);
  if (!model.module) throw examples::Error("Task::make_model returned no module for point " + key(p) + ".");
  model.module->to(device);
  lora::Adapters adapters;
  int64_t trainable = 0;
  if (p.is_full()) {
    for (const auto& t : model.module->parameters()) trainable += t.requires_grad() ? t.numel() : 0;
  } else {
    adapters = lora::inject(*model.module, to_lora_config(o, p));
    trainable = adapters.trainable_parameter_count();
  }
  TrainSettings ts;
  ts.lr = p.lr;
  ts.epochs = o.epochs;
  ts.loraplus_ratio = p.is_full() ? 1.0 : o.loraplus_ratio;
  ts.log_every = log_every;
  TrainCallbacks cb;
  cb.on_log = [&](int64_t step, int64_t total, double loss) { progress.update(step, total, loss); };
  const auto r = train(model, p.is_full() ? nullptr : &adapters, [&](int64_t e) { return task.train_batches(e, p); },
                       ts, device, cb);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const auto metric = task.metric();
  nlohmann::json results = {{"best_val_loss", r.best_val_loss ? nlohmann::json(*r.best_val_loss) : nlohmann::json()},
                            {metric.key, r.test_metric ? nlohmann::json(*r.test_metric) : nlohmann::json()},
                            {"train_losses", r.train_losses},
                            {"val_losses", r.val_losses},
                            {"train_curve", {{"every", log_every}, {"step", r.curve_steps}, {"loss", r.curve_losses}}},
                            {"diverged", r.diverged},
                            {"diverged_reason", r.diverged ? nlohmann::json(r.diverged_reason) : nlohmann::json()},
                            {"steps", r.steps},
                            {"trainable_parameters", trainable},
                            {"wall_time_s", wall}};
  const nlohmann::json doc = {
      {"schema", "lora-sweep-point/1"},
      {"key", key(p)},
      {"column", column(p)},
      {"lr_string", lr_string(p.lr)},
      {"metric", {{"key", metric.key}, {"label", metric.label}, {"higher_is_better", metric.higher_is_better}}},
      {"settings", point_settings(o, task, p)},
      {"environment", environment(o)},
      {"results", results}};
  write_atomic(point_path(o, p), doc.dump(2) + "\n");
  return record_from_json(doc, metric.key);
}

/// The line printed when a point finishes.
inline std::string point_line(const RunRecord& r, const Metric& m) {
  const auto& res = r.doc.at("results");
  if (r.diverged) return "diverged " + r.key + ": " + res.value("diverged_reason", std::string("non-finite loss"));
  return "done " + r.key + ": " + m.key + " " + num(r.metric.value_or(NAN)) + ", best val loss " +
         num(r.best_val_loss.value_or(NAN)) + " (" + format_duration(res.at("wall_time_s").get<double>()) + ")";
}

/// --dry-run: the grid, what is done, and the cost of the rest.
inline void print_plan(const Options& o, const Task& task, const std::vector<Point>& grid,
                       const std::vector<Point>& mine, std::ostream& out) {
  std::set<std::string> selected;
  for (const auto& p : mine) selected.insert(key(p));
  const int64_t steps = o.epochs * task.steps_per_epoch();
  out << "Grid of " << task.name() << " (" << task.model_name() << "): " << grid.size() << " points";
  if (o.sharded) out << ", shard " << o.shard.index << "/" << o.shard.count << " runs " << mine.size();
  out << "; " << o.epochs << " epochs x " << task.steps_per_epoch() << " steps = " << steps << " steps per point.\n";
  size_t todo = 0;
  int64_t todo_steps = 0;
  double seconds = 0;
  bool timed = true;
  for (const auto& p : grid) {
    std::error_code ec;
    const bool done = fs::exists(point_path(o, p), ec);
    const bool here = selected.count(key(p)) > 0;
    out << "  " << key(p) << (done ? "  done" : here ? "  to run" : "  other shard") << "\n";
    if (done || !here) continue;
    ++todo;
    todo_steps += steps;
    const double rate = task.steps_per_second(p);
    if (rate > 0) seconds += static_cast<double>(steps) / rate;
    else timed = false;
  }
  out << "Cost: " << todo << " points to run x " << steps << " steps = " << todo_steps << " steps";
  if (todo == 0) out << ".\n";
  else if (timed) out << ", about " << format_duration(seconds) << " of training on " << o.device
                      << " (the task's speed estimate; evaluation comes on top).\n";
  else out << "; no time estimate (the task gives no speed for " << o.device << ").\n";
}

/// Writes results.json, summary.md and plot.svg/png from the grid's finished points; prints
/// the summary. Returns false (writing nothing) when no point is finished.
inline bool write_report(const Options& o, const Task& task, const std::vector<Point>& grid, const EngineHooks& hooks) {
  auto& out = *hooks.out;
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

  const fs::path dir(o.out);
  remove_stale_tmp(dir, {"results.json", "summary.md", "plot.svg"});
  const auto metric = task.metric();
  write_atomic(dir / "results.json", results_json(task.name(), task.model_name(), metric, records, missing).dump(2) + "\n");
  const auto summary = summary_markdown(task.name(), task.model_name(), metric, records, missing);
  write_atomic(dir / "summary.md", summary);
  const auto a = analyse(records, measures(metric).front());
  write_atomic(dir / "plot.svg", plot_svg(a.curves, a.optima, metric.label,
                                          task.name() + " (" + task.model_name() + "): " + metric.label + " vs LR"));
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
  if (hooks.render_png) out << render_png((dir / "plot.svg").string(), (dir / "plot.png").string()) << "\n";
  if (!missing.empty()) out << missing.size() << " of " << grid.size() << " grid points have no result yet.\n";
  return true;
}

/// Sets LibTorch's intra-op threads and OpenBLAS's own pool (when LibTorch runs on OpenBLAS)
/// to `n`: two workers that each kept OpenBLAS's default of one thread per core would put
/// twice as many busy threads as cores on the machine.
inline void set_threads(int n) {
  torch::set_num_threads(n);
  perf::set_blas_threads(n);
}

/// What run_points() did.
struct PointsRun {
  size_t ran = 0, diverged = 0;
  bool stopped = false;  ///< EngineHooks::after_point asked to stop
};

/// The loop of one process: prepares the task, then trains each point of `todo` that no other
/// process has claimed and none has finished, writing each point's file as it ends.
inline PointsRun run_points(const Options& o, Task& task, const std::vector<Point>& todo, torch::Device device,
                            Reporter& reporter, const EngineHooks& hooks, bool check_blas) {
  PointsRun r;
  if (check_blas && device.is_cpu())  // a reference BLAS makes every matmul ~40x slower: say so up front
    if (const auto blas = perf::blas_check(); blas.slow()) reporter.note(blas.warning);
  task.prepare();
  const int64_t steps = o.epochs * task.steps_per_epoch();
  for (size_t i = 0; i < todo.size() && !r.stopped; ++i) {
    const auto& p = todo[i];
    const auto claim = PointClaim::try_claim(lock_path(o, p));
    if (!claim) continue;                        // another process is training it
    if (load_done(o, task, p)) continue;  // another process finished it meanwhile
    // Ours now: a "<key>.json.tmp.<pid>" beside it was left by a process killed while writing.
    if (remove_stale_tmp(points_dir(o), {key(p) + ".json"}) > 0)
      reporter.note("removed an unfinished temporary file of " + key(p) + " left by an interrupted run");
    reporter.begin_point(i, key(p), steps);
    const auto rec = run_point(o, task, p, device, reporter, hooks.log_every);
    ++r.ran;
    r.diverged += rec.diverged;
    reporter.end_point(point_line(rec, task.metric()), rec.diverged);
    r.stopped = hooks.after_point && !hooks.after_point(rec);
  }
  return r;
}

}  // namespace detail

/// Runs the sweep `o` describes with `task`: --dry-run prints the plan, --merge writes the
/// report from the point files, otherwise this shard's unfinished points run (then, without
/// --shard, the report is written).
inline SweepOutcome run_sweep(const Options& o, Task& task, const EngineHooks& hooks = {}) {
  auto& out = *hooks.out;
  SweepOutcome outcome;
  const auto grid = build_grid(o);
  const auto mine = o.sharded ? select_shard(grid, o.shard) : grid;
  outcome.grid = grid.size();
  outcome.selected = mine.size();
  for (const auto& p : mine)
    if (!p.is_full()) to_lora_config(o, p);  // every config error before any work
  if (o.dry_run) {
    detail::print_plan(o, task, grid, mine, out);
    return outcome;
  }
  if (o.merge) {
    outcome.reported = detail::write_report(o, task, grid, hooks);
    if (!outcome.reported)
      throw examples::Error("--merge: no finished point of this grid in '" + detail::points_dir(o).string() +
                            "'. Run the shards first, with the same flags and --out.");
    return outcome;
  }
  const auto device = device_of(o);
  fs::create_directories(detail::points_dir(o));
  // A read-only or full --out fails here, before any training, not after the first point.
  const auto probe = detail::points_dir(o) / ".write-test";
  detail::write_atomic(probe, "ok\n");
  fs::remove(probe);

  std::vector<Point> todo;
  for (const auto& p : mine)
    if (!detail::load_done(o, task, p)) todo.push_back(p);
  outcome.skipped = mine.size() - todo.size();
  *hooks.log << task.name() << ": " << grid.size() << " grid points";
  if (o.sharded) *hooks.log << ", " << mine.size() << " in shard " << o.shard.index << "/" << o.shard.count;
  *hooks.log << "; " << outcome.skipped << " already done in " << o.out << ", " << todo.size() << " to run\n";

  bool stopped = false;
  if (!todo.empty()) {
    fs::create_directories(detail::locks_dir(o));
    const int64_t steps = o.epochs * task.steps_per_epoch();
    Progress progress(*hooks.log, hooks.terminal.value_or(::isatty(STDERR_FILENO) != 0));
    const size_t workers = std::min<size_t>(static_cast<size_t>(o.jobs), todo.size());
    progress.begin_sweep(todo.size(), steps * static_cast<int64_t>(todo.size()), workers);
    if (workers <= 1) {
      if (o.threads > 0) detail::set_threads(static_cast<int>(o.threads));
      BarReporter reporter(progress);
      const auto r = detail::run_points(o, task, todo, device, reporter, hooks, /*check_blas=*/true);
      outcome.ran = r.ran;
      outcome.diverged = r.diverged;
      stopped = r.stopped;
    } else {
      // Threads per worker: --threads, else the cores shared out.
      const auto cores = std::max(1u, std::thread::hardware_concurrency());
      const int threads = o.threads > 0 ? static_cast<int>(o.threads)
                                        : std::max(1, static_cast<int>(cores / static_cast<unsigned>(workers)));
      *hooks.log << workers << " worker processes, " << threads << " thread(s) each\n";
      const auto r = run_workers(workers, o.program, [&](size_t w, Reporter& reporter) {
        detail::set_threads(threads);
        return detail::run_points(o, task, todo, device, reporter, hooks, /*check_blas=*/w == 0).stopped ? 3 : 0;
      }, progress);
      outcome.ran = r.ran;
      outcome.diverged = r.diverged;
      if (!r.failures.empty()) {
        progress.finish();
        std::string list;
        for (const auto& f : r.failures) list += "\n  " + f;
        throw examples::Error("--jobs: " + std::to_string(r.failures.size()) + " of " + std::to_string(workers) +
                              " worker processes failed (their errors are printed above):" + list +
                              "\nEvery finished point is kept in " + detail::points_dir(o).string() +
                              "; fix the cause and rerun the same command to resume.");
      }
    }
    progress.finish();
  }
  // Points another process holds, or that a worker left, are not done: say so.
  size_t done = 0;
  for (const auto& p : mine) {
    std::error_code ec;
    done += fs::exists(detail::point_path(o, p), ec);
  }
  if (done < mine.size() && !stopped) {
    stopped = true;
    *hooks.log << (mine.size() - done) << " point(s) not done here: another process on the same --out is training "
               << "them (see " << detail::locks_dir(o).string() << "). Rerun when it has finished.\n";
  }
  outcome.complete = !stopped;
  if (!o.sharded) {
    outcome.reported = detail::write_report(o, task, grid, hooks);
  } else if (outcome.complete) {
    out << "shard " << o.shard.index << "/" << o.shard.count << ": all " << mine.size() << " points done in "
        << detail::points_dir(o).string() << ". When every shard is done, run the same command with --merge "
        << "instead of --shard.\n";
  }
  return outcome;
}

/// main() of a sweep program: parses the command line, builds the task, runs the sweep.
/// Exit status 0 on success, 2 on a usage error, 1 on any other error.
inline int program_main(int argc, const char* const argv[], const ProgramSpec& spec,
                        const std::function<std::unique_ptr<Task>(const Options&)>& make_task) {
  try {
    // Large CPU blocks kept for reuse instead of mapped and faulted in again every step:
    // 1.8x faster FullFT and 1.3x faster LoRA steps on a 2-core VM (docs/performance.md).
    perf::use_caching_cpu_allocator();
    const auto o = parse_options(argc, argv, spec);
    const auto task = make_task(o);
    run_sweep(o, *task);
    return 0;
  } catch (const HelpRequested& h) {
    std::cout << h.text;
    return 0;
  } catch (const examples::UsageError& e) {
    std::cerr << spec.name << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << spec.name << ": error: " << examples::message(e) << "\n";
    return 1;
  }
}

}  // namespace sweep

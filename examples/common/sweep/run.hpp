// Running a sweep: the engine runs the points of this shard that are not done yet, writes each
// one's point file (point.hpp) the moment it finishes, and then the report (report.hpp); and
// program_main(), the main() of a sweep program, which parses the command line (cli.hpp),
// builds the program's Task (task.hpp) and runs the sweep. Model-independent: the task
// supplies the model, data, loss and metric.
//
// Resuming: a point whose file exists is done and skipped (its settings must equal this run's).
// A point trains only while this process holds its claim (PointClaim below: an exclusive flock()
// on out/locks/<key>.lock), so that two processes working on the same --out (two --jobs
// workers, two shells started by mistake, two overlapping shards) never train the same point.
// The kernel drops the lock when the holder exits or is killed, so a crashed run never leaves a
// point claimed; the lock files themselves stay (removing a lock file that another process may
// be opening is a race). A leftover "<key>.json.tmp.<pid>" (a process killed while writing) is
// removed once the point is claimed. A NaN or infinite loss marks the point diverged; the sweep
// goes on. --jobs N runs N worker processes (jobs.hpp).
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <torch/utils.h>

#include <lora/error.hpp>
#include <lora/inject.hpp>
#include <lora/linear.hpp>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "perf/allocator.hpp"
#include "perf/blas.hpp"
#include "error_message.hpp"
#include "errors.hpp"

#include "cli.hpp"
#include "grid.hpp"
#include "jobs.hpp"
#include "point.hpp"
#include "report.hpp"
#include "task.hpp"

namespace sweep {

/// A claim on one grid point while it trains (see the top of this file).
class PointClaim {
 public:
  /// Claims `lock_file` (created when absent) without waiting: nothing when another process
  /// holds it. Throws examples::FileError when the file cannot be created.
  static std::optional<PointClaim> try_claim(const std::filesystem::path& lock_file) {
    const int fd = ::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
      throw examples::FileError("cannot create the lock file '" + lock_file.string() + "': " + std::strerror(errno) +
                                ". Check that --out is writable.");
    while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) return std::nullopt;
      throw examples::FileError("cannot lock '" + lock_file.string() + "': " + std::strerror(err) +
                                ". Use a local file system for --out (flock is needed).");
    }
    return PointClaim(fd);
  }

  PointClaim(PointClaim&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  PointClaim& operator=(PointClaim&& other) noexcept {
    if (this != &other) {
      release();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  PointClaim(const PointClaim&) = delete;
  PointClaim& operator=(const PointClaim&) = delete;
  ~PointClaim() { release(); }

 private:
  explicit PointClaim(int fd) : fd_(fd) {}
  void release() {
    if (fd_ >= 0) ::close(fd_);  // closing the last descriptor drops the flock
    fd_ = -1;
  }
  int fd_ = -1;
};

namespace fs = std::filesystem;

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

/// Freezes what `--full-train what` leaves out of a FullFT run: nothing for "all"; every
/// torch::nn::Embedding's parameters for "no-embeddings"; every parameter outside a Linear
/// layer (torch::nn::Linear or lora::Linear: the layers all-linear LoRA adapts) for "linear".
inline void restrict_full_training(torch::nn::Module& model, const std::string& what) {
  if (what == "all") return;
  const bool linear_only = what == "linear";
  if (!linear_only && what != "no-embeddings")
    throw examples::UsageError("--full-train: '" + what + "' is not allowed; use one of " +
                               detail::join(full_train_names()) + ".");
  const auto restrict = [&](torch::nn::Module& m) {
    const bool embedding = m.as<torch::nn::Embedding>() != nullptr;
    const bool linear = m.as<torch::nn::Linear>() != nullptr || m.as<lora::LinearImpl>() != nullptr;
    if (linear_only ? !linear : embedding)
      for (auto& t : m.parameters(/*recurse=*/false)) t.set_requires_grad(false);
  };
  restrict(model);  // (modules(include_self) needs a model held by a shared_ptr)
  for (const auto& m : model.modules(/*include_self=*/false)) restrict(*m);
}

/// The "results" of a point file (point.hpp) for training result `r`.
inline nlohmann::json results_json(Task& task, const PointRun& run, const TrainResult& r, int64_t trainable,
                                   double wall) {
  const auto metric = task.metric();
  const auto rule = task.collapse_rule();
  return {{"best_val_loss", r.best_val_loss ? nlohmann::json(*r.best_val_loss) : nlohmann::json()},
          {metric.key, r.test_metric ? nlohmann::json(*r.test_metric) : nlohmann::json()},
          {"train_losses", r.train_losses},
          {"val_losses", r.val_losses},
          {"train_curve", {{"every", run.train.log_every}, {"step", r.curve_steps}, {"loss", r.curve_losses}}},
          {"diverged", r.diverged},
          {"diverged_reason", r.diverged ? nlohmann::json(r.diverged_reason) : nlohmann::json()},
          {"collapsed", rule.collapsed(r.test_metric, r.diverged)},
          {"collapse_rule", rule.description},
          {"collapse_bound", std::isnan(rule.bound) ? nlohmann::json() : nlohmann::json(rule.bound)},
          {"steps", r.steps},
          {"trainable_parameters", trainable},
          {"wall_time_s", wall}};
}

/// The task's fresh model for the seed of `p`, on `device`.
inline Model fresh_model(Task& task, const Point& p, uint64_t seed, torch::Device device) {
  torch::manual_seed(seed);
  Model model = task.make_model(p);
  if (!model.module) throw examples::Error("Task::make_model returned no module for point " + key(p) + ".");
  model.module->to(device);
  return model;
}

/// Trains point `p` with what point_run() gives (point.hpp), writes its file, which records
/// exactly that, and returns its record.
inline RunRecord run_point(const Options& o, Task& task, const Point& p, torch::Device device, Reporter& progress,
                           int64_t log_every) {
  const auto start = std::chrono::steady_clock::now();
  const PointRun run = point_run(o, p, log_every);
  Model model = fresh_model(task, p, run.seed, device);
  lora::ModelAdapter adapters;
  int64_t trainable = 0;
  if (run.lora) {
    adapters = lora::inject(*model.module, *run.lora);
    trainable = adapters.trainable_parameter_count();
  } else {
    restrict_full_training(*model.module, run.full_train);
    for (const auto& t : lora::unique_parameters(*model.module)) trainable += t.requires_grad() ? t.numel() : 0;
  }
  TrainCallbacks cb;
  cb.on_log = [&](int64_t step, int64_t total, double loss) { progress.update(step, total, loss); };
  const auto r = train(model, run.lora ? &adapters : nullptr, [&](int64_t e) { return task.train_batches(e, p); },
                       run.train, device, cb);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const auto doc = point_document(o, task, p, run, results_json(task, run, r, trainable, wall));
  write_atomic(point_path(o, p), doc.dump(2) + "\n");
  return record_from_json(doc, task.metric().key);
}

/// Whether LoRA points `a` and `b` can train in one pass (--pack): the same seed, hence the same
/// base model (a task may draw a new head from it) and the same data order.
inline bool packable(const Point& a, const Point& b) { return !a.is_full() && !b.is_full() && a.seed == b.seed; }

/// Trains LoRA points `pack` (packable, each with what point_run() gives) in one pass on one
/// base model (train_packed): point k's adapter is named after its key and starts as the
/// adapter of its run alone (Config::seed_name "default"). Writes each point's file, whose
/// environment names the points it was packed with, and returns their records in order.
inline std::vector<RunRecord> run_pack(const Options& o, Task& task, const std::vector<Point>& pack,
                                       torch::Device device, Reporter& progress, int64_t log_every) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<PointRun> runs;
  for (const auto& p : pack) runs.push_back(point_run(o, p, log_every));
  Model model = fresh_model(task, pack.front(), runs.front().seed, device);
  std::vector<lora::ModelAdapter> adapters;
  for (size_t k = 0; k < pack.size(); ++k) {
    auto c = *runs[k].lora;
    c.seed_name = c.adapter_name;
    c.adapter_name = key(pack[k]);
    adapters.push_back(lora::inject(*model.module, c));
  }
  // Each inject() froze everything but its own adapter, the earlier adapters too.
  for (const auto& a : adapters)
    for (auto& t : a.parameters()) t.set_requires_grad(true);
  std::vector<PackedRun> packed;
  for (size_t k = 0; k < pack.size(); ++k)
    packed.push_back({&adapters[k], runs[k].train, [&, k](int64_t e) { return task.train_batches(e, pack[k]); }});
  TrainCallbacks cb;
  const auto K = static_cast<int64_t>(pack.size());
  cb.on_log = [&](int64_t step, int64_t total, double loss) { progress.update(K * step, K * total, loss); };
  const auto results = train_packed(model, packed, device, cb);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::vector<RunRecord> records;
  for (size_t k = 0; k < pack.size(); ++k) {
    auto doc = point_document(o, task, pack[k], runs[k],
                              results_json(task, runs[k], results[k], adapters[k].trainable_parameter_count(), wall));
    auto& with = doc.at("environment")["packed_with"] = nlohmann::json::array();
    for (const auto& q : pack)
      if (key(q) != key(pack[k])) with.push_back(key(q));
    write_atomic(point_path(o, pack[k]), doc.dump(2) + "\n");
    records.push_back(record_from_json(doc, task.metric().key));
  }
  return records;
}

/// The line printed when a point finishes.
inline std::string point_line(const RunRecord& r, const Metric& m) {
  const auto& res = r.doc.at("results");
  if (r.diverged) return "diverged " + r.key + ": " + res.value("diverged_reason", std::string("non-finite loss"));
  return "done " + r.key + ": " + m.key + " " + num(r.metric.value_or(NAN)) + ", best val loss " +
         num(r.best_val_loss.value_or(NAN)) + (res.value("collapsed", false) ? ", collapsed" : "") + " (" +
         format_duration(res.at("wall_time_s").get<double>()) + ")";
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
/// process has claimed and none has finished, writing each point's file as it ends. With
/// --pack K, a LoRA point takes up to K - 1 more unclaimed LoRA points of its seed from the
/// rest of `todo` and trains with them in one pass (run_pack).
inline PointsRun run_points(const Options& o, Task& task, const std::vector<Point>& todo, torch::Device device,
                            Reporter& reporter, const EngineHooks& hooks, bool check_blas) {
  PointsRun r;
  if (check_blas && device.is_cpu())  // a reference BLAS makes every matmul ~40x slower: say so up front
    if (const auto blas = perf::blas_check(); blas.slow()) reporter.note(blas.warning);
  task.prepare();
  const int64_t steps = o.epochs * task.steps_per_epoch();
  std::vector<bool> taken(todo.size(), false);  // trained here in an earlier pack
  // Claims point i for this process: nothing when another process holds it or finished it.
  const auto claim = [&](size_t i) -> std::optional<PointClaim> {
    auto c = PointClaim::try_claim(lock_path(o, todo[i]));
    if (!c || load_done(o, task, todo[i])) return std::nullopt;  // another process trains or finished it
    // Ours now: a "<key>.json.tmp.<pid>" beside it was left by a process killed while writing.
    if (remove_stale_tmp(points_dir(o), {key(todo[i]) + ".json"}) > 0)
      reporter.note("removed an unfinished temporary file of " + key(todo[i]) + " left by an interrupted run");
    return c;
  };
  for (size_t i = 0; i < todo.size() && !r.stopped; ++i) {
    if (taken[i]) continue;
    std::vector<PointClaim> claims;
    if (auto c = claim(i)) claims.push_back(std::move(*c));
    else continue;
    std::vector<Point> pack = {todo[i]};
    for (size_t j = i + 1; j < todo.size() && static_cast<int64_t>(pack.size()) < o.pack; ++j) {
      if (taken[j] || !packable(todo[i], todo[j])) continue;
      if (auto c = claim(j)) {
        claims.push_back(std::move(*c));
        pack.push_back(todo[j]);
        taken[j] = true;
      }
    }
    std::string label = key(pack.front());
    if (pack.size() > 1) label += " +" + std::to_string(pack.size() - 1) + " packed";
    reporter.begin_point(i, label, steps * static_cast<int64_t>(pack.size()));
    const auto records = pack.size() == 1
                             ? std::vector<RunRecord>{run_point(o, task, pack.front(), device, reporter, hooks.log_every)}
                             : run_pack(o, task, pack, device, reporter, hooks.log_every);
    for (size_t k = 0; k < records.size(); ++k) {
      const auto& rec = records[k];
      // The pack's steps count as done with its first point; the others end with none.
      if (k > 0) reporter.begin_point(i, rec.key, 0);
      ++r.ran;
      r.diverged += rec.diverged;
      reporter.end_point(point_line(rec, task.metric()), rec.diverged);
      r.stopped = r.stopped || (hooks.after_point && !hooks.after_point(rec));
    }
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
    point_run(o, p);  // every config error before any work
  if (o.dry_run) {
    detail::print_plan(o, task, grid, mine, out);
    return outcome;
  }
  if (o.merge) {
    outcome.reported = detail::write_report(o, task, grid, out, hooks.render_png);
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
    outcome.reported = detail::write_report(o, task, grid, out, hooks.render_png);
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

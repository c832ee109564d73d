// One point of the sweep: what it runs with, from the parsed Options and its grid Point (the
// grid itself: grid.hpp), and its file, out/points/<key>.json, written atomically the moment the
// point ends and read back on every rerun (resume) and by the report (as a RunRecord).
//
// point_run() is the one place that builds what a point runs with (PointRun: its lora::Config,
// what FullFT trains, its TrainSettings). The engine trains with it (run.hpp run_point) and
// the file's "settings" are point_settings() of it, also when a rerun checks a finished file,
// so what is recorded cannot drift from what ran.
//
// A point file (out/points/<key>.json):
// {
//   "schema": "lora-sweep-point/1", "key": "lora_r16_lr1e-04_s42", "column": "lora_r16",
//   "lr_string": "0.0001", "metric": {"key": "test_acc", "label": ..., "higher_is_better": true},
//   "settings": {           // what determines the numbers; a rerun must match it exactly
//     "task", "model", "method", "lr", "seed", "epochs", "batch_size", "train_size", "val_size",
//     "max_len", "optimizer": {...}, "extra": {...},
//     FullFT only, when not "all": "full_train" ("no-embeddings", "linear": what was trained);
//     LoRA only: "rank", "alpha", "alpha_per_rank", "scale", "scaling", "init", ["init_std"],
//     "targets", "loraplus_ratio", "dora"
//   },
//   "environment": {        // where and when it ran
//     "hostname", "device", "threads", "lora_version", "libtorch_version", "model_dir",
//     "data_dir", "command_line", "finished_at",
//     "packed_with": [keys]  // --pack only: the points trained in the same pass (run.hpp)
//   },
//   "results": {"best_val_loss", "<metric key>", "train_losses", "val_losses",
//               "train_curve": {"every", "step": [...], "loss": [...]},  // mean loss every few steps
//               "diverged", "diverged_reason", "steps", "trainable_parameters", "wall_time_s",
//               "collapsed", "collapse_rule", "collapse_bound"}  // the task's CollapseRule (task.hpp)
// }
// Settings are only ever added with a value that older files are read as (absent "full_train"
// is "all"), so that finished points stay valid; the report recomputes "collapsed" from the
// rule, also for files written before it was recorded.
// Resuming: a point whose file exists is done and skipped; its settings must equal this
// run's, or the sweep stops rather than mix two experiments in one --out. A file that does not
// parse stops the sweep too, naming it (never overwritten, never counted as done).
// A point trains only while this process holds its claim (out/locks/<key>.lock, run.hpp),
// so two processes on one --out never train the same point; a leftover "<key>.json.tmp.<pid>"
// (a process killed while writing) is removed once the point is claimed. A NaN or infinite
// loss marks the point diverged; the sweep goes on.
#pragma once

#include <unistd.h>

#include <torch/utils.h>
#include <torch/version.h>

#include <lora/config.hpp>
#include <lora/init.hpp>
#include <lora/io.hpp>
#include <lora/scaling.hpp>
#include <lora/version.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "errors.hpp"
#include "cli.hpp"
#include "grid.hpp"
#include "task.hpp"

namespace sweep {

/// The grid the options describe (grid.hpp); Options::extra becomes each point's extra.
inline std::vector<Point> build_grid(const Options& o) {
  GridSpec g;
  g.lrs = o.lrs;
  g.ranks = o.ranks;
  g.full_lrs = o.full_lrs;
  g.seeds = o.seeds;
  g.alpha = o.alpha;
  g.alpha_per_rank = o.alpha_per_rank;
  g.alphas = o.alphas;
  g.alpha_lrs = o.alpha_lrs;
  g.scaling = o.scaling;
  g.init = o.init;
  g.extra = o.extra;
  return build_grid(g);
}

/// The scaling policy called `name` (one of scaling_names()).
inline lora::Scaling scaling_policy(const std::string& name) {
  detail::one_of("--scaling", name, scaling_names());
  return lora::scaling::by_name(name);
}

/// The init policy called `name` (one of init_names()); `std` is gaussian-gaussian's sigma.
inline lora::Init init_policy(const std::string& name, double std) {
  detail::one_of("--init", name, init_names());
  return lora::init::by_name(name, std);
}

/// Whether the init policy called `name` takes a sigma (--init-std).
inline bool init_takes_std(const std::string& name) {
  return name == "gaussian-gaussian" || name == "gaussian-subtracted";
}

/// Everything point `p` runs with. Built by point_run() alone: the engine trains with it
/// (run.hpp run_point) and the point file records it (point_settings below), so the two cannot
/// disagree. What the task makes of the options (data sizes, --max-len, its own flags) is
/// recorded beside it, from the options.
struct PointRun {
  uint64_t seed = 0;                 ///< seeds torch before the task makes the model (and the adapters)
  std::optional<lora::Config> lora;  ///< the adapters inject() adds: LoRA points only
  std::string init;                  ///< LoRA: the init policy's name, as --init gives it
  std::optional<double> init_std;    ///< LoRA: the init policy's sigma, for a policy that takes one
  std::string full_train;            ///< FullFT: what trains (--full-train: all, no-embeddings, linear)
  TrainSettings train;               ///< the optimiser and the loop
};

/// What point `p` runs with, from the options and the point (see PointRun). `log_every` is how
/// often the loop reads the loss (EngineHooks::log_every); it changes no number of the run.
/// Throws examples::UsageError for a scaling or init name that is not known.
inline PointRun point_run(const Options& o, const Point& p, int64_t log_every = TrainSettings{}.log_every) {
  PointRun r;
  r.seed = p.seed;
  r.train.lr = p.lr;
  r.train.epochs = o.epochs;
  r.train.adamw = o.adamw;
  r.train.loraplus_ratio = p.is_full() ? 1.0 : o.loraplus_ratio;
  r.train.log_every = log_every;
  if (p.is_full()) {
    r.full_train = o.full_train;
    return r;
  }
  r.init = p.init;
  if (init_takes_std(p.init)) r.init_std = o.init_std;
  lora::Config c;
  c.rank = p.rank;
  c.alpha = p.alpha;
  c.scaling = scaling_policy(p.scaling);
  c.init = init_policy(r.init, r.init_std.value_or(1.0));  // a policy without sigma ignores it
  c.targets = o.targets;
  // The study adapts the output head too (every Linear, as the seed study); the library's
  // default, like PEFT's, leaves it alone.
  c.adapt_output_head = true;
  c.seed = r.seed;
  c.use_dora = o.dora;
  // As the seed study (and PEFT): a rank above a layer's min(in, out) is allowed, e.g. r = 128
  // on DistilBERT's 768 -> 4 classifier (PiSSA/OLoRA still refuse it).
  c.allow_rank_above_min = true;
  // The study's lm_head experiment adapts GPT-2's lm_head alone, whose weight is wte's (tied):
  // the adapter acts at the output only (PEFT's behaviour without ensure_weight_tying), as the
  // seed's probable setting; the library refuses that unless asked.
  c.allow_untied_weights = true;
  r.lora = std::move(c);
  return r;
}

/// One point file, as the report needs it.
struct RunRecord {
  std::string key, column, method;
  int64_t rank = 0;
  double alpha = 0;  ///< 0 for FullFT
  double scale = 0;  ///< LoRA's s (settings.scale); 0 for FullFT
  double lr = 0;
  uint64_t seed = 0;
  std::optional<double> metric, best_val_loss;
  bool diverged = false;
  bool collapsed = false;  ///< by the task's CollapseRule, set by the report (mark_collapsed)
  nlohmann::json doc;  ///< the whole point file
};

namespace detail {

inline std::optional<double> optional_number(const nlohmann::json& j) {
  if (j.is_number()) return j.get<double>();
  return std::nullopt;
}

}  // namespace detail

/// The record of a point file `doc` (its schema: the top of this file); `metric_key` names the metric.
inline RunRecord record_from_json(const nlohmann::json& doc, const std::string& metric_key) {
  const auto& s = doc.at("settings");
  const auto& r = doc.at("results");
  // Out-of-range or non-integer numbers must not reach get<int64_t/uint64_t>() (undefined
  // behaviour): an error instead, which the caller reports with the file's name.
  for (const char* k : {"seed", "rank"})
    if (s.contains(k) && !(s.at(k).is_number_unsigned() || (s.at(k).is_number_integer() && s.at(k).get<int64_t>() >= 0)))
      throw examples::DataError(std::string("settings.") + k + " is " + s.at(k).dump() +
                                ", not a non-negative integer");
  RunRecord rec;
  rec.key = doc.at("key").get<std::string>();
  rec.method = s.at("method").get<std::string>();
  rec.rank = s.value("rank", int64_t{0});
  rec.alpha = s.value("alpha", 0.0);
  rec.scale = s.value("scale", 0.0);
  rec.lr = s.at("lr").get<double>();
  rec.seed = s.at("seed").get<uint64_t>();
  // Files written before --alphas have no "column" of their own: theirs follows from the rank.
  rec.column = doc.contains("column") ? doc.at("column").get<std::string>()
               : rec.method == "full" ? "full"
                                      : "lora_r" + std::to_string(rec.rank);
  rec.diverged = r.at("diverged").get<bool>();
  rec.metric = detail::optional_number(r.value(metric_key, nlohmann::json()));
  rec.best_val_loss = detail::optional_number(r.value("best_val_loss", nlohmann::json()));
  rec.doc = doc;
  return rec;
}

namespace fs = std::filesystem;

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

/// The JSON in `path`, or nothing when it cannot be read or parsed (lora::read_json; a point
/// file that a killed process left half-written is rerun, not an error).
inline std::optional<nlohmann::json> read_json_if_valid(const fs::path& path) {
  try {
    return lora::read_json<nlohmann::json>(path.string(), "point file");
  } catch (const lora::FileError&) {
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

/// The settings that determine the numbers of point `p`, run with `run` (see the header
/// comment): what `run` holds, and what the task makes of the options. The optimizer's
/// schedule, warm-up and clipping are train()'s (task.hpp): a constant LR, none, none.
inline nlohmann::json point_settings(const Options& o, const Task& task, const Point& p, const PointRun& run) {
  const auto& t = run.train;
  nlohmann::json s = {{"task", task.name()},
                      {"model", task.model_name()},
                      {"method", p.method},
                      {"lr", t.lr},
                      {"seed", run.seed},
                      {"epochs", t.epochs},
                      {"batch_size", o.batch_size},
                      {"train_size", o.train_size},
                      {"val_size", o.val_size},
                      {"max_len", o.max_len},
                      {"optimizer",
                       {{"name", "AdamW"}, {"betas", {t.adamw.beta1, t.adamw.beta2}}, {"eps", t.adamw.eps},
                        {"weight_decay", t.adamw.weight_decay}, {"schedule", "constant"}, {"warmup_steps", 0},
                        {"grad_clip", nullptr}}},
                      {"extra", p.extra}};
  if (!run.lora) {
    if (run.full_train != "all") s["full_train"] = run.full_train;
    // Tied weights trained, one update per step (points run before this was fixed stepped
    // them twice and lack the entry, so they no longer pass as this point's).
    if (run.full_train == "all" && !task.tied_weights().empty()) s["tied_weights"] = task.tied_weights();
    return s;
  }
  const auto& c = *run.lora;
  s["rank"] = c.rank;
  s["alpha"] = c.alpha;
  s["alpha_per_rank"] = o.alpha_per_rank > 0 ? nlohmann::json(o.alpha_per_rank) : nlohmann::json();
  s["scale"] = c.scaling.scale(c.alpha, c.rank);
  s["scaling"] = c.scaling.name;
  s["init"] = run.init;
  if (run.init_std) s["init_std"] = *run.init_std;
  s["targets"] = c.targets;
  s["loraplus_ratio"] = t.loraplus_ratio;
  s["dora"] = c.use_dora;
  return s;
}

/// The settings point `p` records and a rerun checks: point_settings() of point_run(o, p).
inline nlohmann::json point_settings(const Options& o, const Task& task, const Point& p) {
  return point_settings(o, task, p, point_run(o, p));
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
  const auto doc = read_json_if_valid(path);
  const auto refuse = [&](const std::string& why) {
    return examples::FileError("'" + path.string() + "' is not a valid point file (" + why +
                           "): truncated or edited by hand? The sweep neither counts it as done nor overwrites it. "
                           "Move it out of " + points_dir(o).string() + " to rerun point " + key(p) +
                           ", or restore it from version control.");
  };
  if (!doc) throw refuse("not valid JSON");
  if (!doc->contains("settings") || !doc->contains("results")) throw refuse("no \"settings\" or \"results\"");
  if (doc->value("key", nlohmann::json()) != key(p)) throw refuse("its \"key\" is not \"" + key(p) + "\"");
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

/// The whole point file of `p`: its identity, the settings of `run` (what it ran with), where it
/// ran, and `results` (the "results" object of the header comment).
inline nlohmann::json point_document(const Options& o, const Task& task, const Point& p, const PointRun& run,
                                     const nlohmann::json& results) {
  const auto metric = task.metric();
  return {{"schema", "lora-sweep-point/1"},
          {"key", key(p)},
          {"column", column(p)},
          {"lr_string", lr_string(p.lr)},
          {"metric", {{"key", metric.key}, {"label", metric.label}, {"higher_is_better", metric.higher_is_better}}},
          {"settings", point_settings(o, task, p, run)},
          {"environment", environment(o)},
          {"results", results}};
}

}  // namespace detail

}  // namespace sweep

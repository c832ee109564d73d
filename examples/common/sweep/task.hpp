// What a sweep program supplies to the engine: the Task interface (its name, model, metric,
// data and a fresh model per point). tasks/agnews_task.hpp and tasks/wikitext_task.hpp implement it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "grid.hpp"
#include "record.hpp"
#include "train.hpp"

namespace sweep {

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
  /// When a finished run counts as collapsed (record.hpp). The default: only diverged runs.
  /// May load data (the WikiText task evaluates its base model once); called by the engine
  /// after each point and by the report.
  virtual CollapseRule collapse_rule() { return {}; }
  /// A fresh model with the base weights for point `p`. The engine has just seeded torch with
  /// p.seed (so a newly initialised head is reproducible); it then moves the module to the
  /// device and injects LoRA (LoRA points) or trains every parameter (FullFT).
  virtual Model make_model(const Point& p) = 0;
  /// The training batches of `epoch` (from 0) in order, on the CPU; shuffle with p.seed and epoch.
  virtual std::vector<Batch> train_batches(int64_t epoch, const Point& p) = 0;
};

}  // namespace sweep

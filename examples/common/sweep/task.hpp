// What a sweep program supplies and how a point trains: the Task interface (its name, model,
// metric, collapse rule, data and a fresh model per point; tasks/agnews_task.hpp and
// tasks/wikitext_task.hpp implement it) and the training loop, kept apart from any model: AdamW
// with a constant LR over the epochs a task's batches make, the validation loss after each
// epoch, the test metric at the end, and a divergence check. The task supplies the model and its
// loss through the Model struct below.
//
// The loss is read as a host number only every `log_every` steps (and at the end of each
// epoch): between reads it is summed on the device, so the GPU is never stalled per step.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <lora/model_adapter.hpp>
#include <lora/error.hpp>
#include <lora/loraplus.hpp>
#include <lora/model.hpp>
#include <lora/routing.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "grid.hpp"

namespace sweep {

/// One batch: named tensors as the task's collate made them, e.g. "input_ids" (B, T),
/// "attention_mask" (B, T), "labels" (B).
using Batch = std::map<std::string, torch::Tensor>;

/// A model as the training loop sees it. The closures capture the task's typed model.
struct Model {
  /// The module to train: LoRA is injected into it, FullFT optimises all its parameters that
  /// require grad. The engine moves it to the device.
  std::shared_ptr<torch::nn::Module> module;
  /// The mean loss of one training batch (already on the device): a 0-d tensor with grad.
  std::function<torch::Tensor(const Batch&)> loss;
  /// The validation loss; called under torch::NoGradGuard with the module in eval mode.
  std::function<double()> val_loss;
  /// The test metric (accuracy, perplexity, ...) of the final model; called once, like val_loss.
  std::function<double()> test_metric;
  /// Per row of a training batch: the summed loss (B) and what it counts (B), so that the mean
  /// loss of any set of rows is Σ sum / Σ count over them (e.g. a row's summed token NLL and its
  /// token count). Only --pack uses it (train_packed): each point's loss is the mean over its own rows.
  std::function<std::pair<torch::Tensor, torch::Tensor>(const Batch&)> row_losses;
};

/// AdamW's settings besides the learning rate. The study keeps them fixed (no flag sets them):
/// these defaults are their one statement; every point file records them (point.hpp).
struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.001;
};

/// The optimiser and loop settings of one run. A sweep point's come from point_run()
/// (point.hpp), the one place that builds them.
struct TrainSettings {
  double lr = 1e-4;
  int64_t epochs = 5;
  AdamWSettings adamw;        ///< constant LR: no schedule, no warm-up, no gradient clipping
  double loraplus_ratio = 1;  ///< LoRA+: B's (and DoRA magnitudes') LR = ratio * lr; 1: one LR
  int64_t log_every = 5;      ///< read the loss as a number (and add a curve point) every this many steps
};

/// What a run produced. Non-finite numbers never appear: a NaN or infinite loss stops the run.
struct TrainResult {
  std::vector<double> train_losses;  ///< mean training loss per completed epoch
  std::vector<double> val_losses;    ///< validation loss per completed epoch
  /// The training-loss curve: curve_losses[i] is the mean loss of the steps after
  /// curve_steps[i - 1] up to curve_steps[i] (optimizer steps counted from 1 over all epochs;
  /// every log_every steps, and at the end of each epoch).
  std::vector<int64_t> curve_steps;
  std::vector<double> curve_losses;
  std::optional<double> best_val_loss;
  std::optional<double> test_metric;  ///< absent when diverged
  bool diverged = false;
  std::string diverged_reason;        ///< e.g. "training loss nan over steps 41-60 of epoch 1"
  int64_t steps = 0;                  ///< optimizer steps taken
};

/// Progress hooks: on_log(step, expected total steps, mean loss over the last steps);
/// on_epoch(epoch from 1, train loss, val loss).
struct TrainCallbacks {
  std::function<void(int64_t, int64_t, double)> on_log;
  std::function<void(int64_t, double, double)> on_epoch;
};

/// `b` with every tensor on `device` (non-blocking copies).
inline Batch to_device(const Batch& b, torch::Device device) {
  Batch out;
  for (const auto& [name, t] : b) out.emplace(name, t.to(device, /*non_blocking=*/true));
  return out;
}

/// Σ sum / Σ count over `batches`. `fn` gets each batch on `device` and returns {sum, count}
/// as 0-d tensors (e.g. summed token NLL and token count); both are accumulated on the
/// device and read once at the end.
inline double weighted_mean(const std::vector<Batch>& batches, torch::Device device,
                            const std::function<std::pair<torch::Tensor, torch::Tensor>(const Batch&)>& fn) {
  auto sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device));    // ()
  auto count = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device));  // ()
  for (const auto& b : batches) {
    const auto [s, n] = fn(to_device(b, device));
    sum += s.detach().to(torch::kDouble);
    count += n.detach().to(torch::kDouble);
  }
  const double n = count.item<double>();
  if (!(n > 0))
    throw examples::Error("weighted_mean: the batches hold no example (count 0); check --val-size and the data.");
  return sum.item<double>() / n;
}

namespace detail {

/// Runs `fn` under NoGradGuard with `module` in eval mode, then puts it back in train mode.
inline double evaluate(torch::nn::Module& module, const std::function<double()>& fn) {
  struct TrainAgain {
    torch::nn::Module& m;
    ~TrainAgain() { m.train(); }
  } restore{module};
  torch::NoGradGuard no_grad;
  module.eval();
  return fn();
}

inline torch::optim::AdamWOptions adamw(const TrainSettings& s, double lr) {
  return torch::optim::AdamWOptions(lr)
      .betas(std::make_tuple(s.adamw.beta1, s.adamw.beta2))
      .eps(s.adamw.eps)
      .weight_decay(s.adamw.weight_decay)
      .amsgrad(false);
}

/// AdamW over the adapters (with LoRA+, lora::loraplus_param_groups: B and DoRA magnitudes at
/// lr * loraplus_ratio, the rest at lr) or, for FullFT (`adapters` null), over every parameter
/// of the module that requires grad.
inline std::unique_ptr<torch::optim::AdamW> make_optimizer(const Model& m, const lora::ModelAdapter* adapters,
                                                           const TrainSettings& s) {
  if (adapters && s.loraplus_ratio != 1)
    return std::make_unique<torch::optim::AdamW>(lora::loraplus_param_groups(*adapters, adamw(s, s.lr), s.loraplus_ratio),
                                                 adamw(s, s.lr));
  std::vector<torch::Tensor> params;
  if (adapters) {
    params = adapters->parameters();
  } else {
    // Each tensor once: a weight tied under two names (GPT-2's lm_head and wte) listed twice
    // would get two AdamW updates per step.
    for (const auto& p : lora::unique_parameters(*m.module))
      if (p.requires_grad()) params.push_back(p);
    if (params.empty())
      throw examples::Error("train: full fine-tuning, but no parameter of the model requires grad; the task's model "
                            "must leave its parameters trainable.");
  }
  return std::make_unique<torch::optim::AdamW>(params, adamw(s, s.lr));
}

}  // namespace detail

/// One run of a packed training pass (train_packed): its adapter on the shared model, its
/// settings (own LR, LoRA+ ratio) and its own batches.
struct PackedRun {
  const lora::ModelAdapter* adapters = nullptr;
  TrainSettings settings;
  std::function<std::vector<Batch>(int64_t)> epoch_batches;
};

namespace detail {

/// `batches` as one: each named tensor concatenated along the rows (dim 0). The batches must
/// have the same names and the same shapes beyond the rows.
inline Batch concat_batches(const std::vector<const Batch*>& batches) {
  Batch out;
  for (const auto& [name, first] : *batches.front()) {
    std::vector<torch::Tensor> parts;
    for (const auto* b : batches) {
      const auto it = b->find(name);
      if (it == b->end() || it->second.sizes().slice(1) != first.sizes().slice(1))
        throw examples::Error("--pack: the packed runs' batches differ in '" + name + "' (" +
                              (it == b->end() ? std::string("absent") : c10::str(it->second.sizes())) + " against " +
                              c10::str(first.sizes()) + "); packed runs need batches of one shape per step.");
      parts.push_back(it->second);
    }
    out.emplace(name, torch::cat(parts, /*dim=*/0));
  }
  return out;
}

/// The loop behind train() and train_packed(). One run: its loss is model.loss of its batch,
/// exactly as a run of its own. Several (packed): one forward/backward per step over the
/// concatenation of every live run's batch, row b routed to its run's adapter
/// (lora::RowRouting); each run's loss is the mean over its rows (model.row_losses), and the
/// step backpropagates their sum, so each adapter gets the gradient of its own loss (the
/// base is frozen and rows do not mix). Each run has its optimizer, loss window and result;
/// a run whose loss is not finite stops there and the others go on.
inline std::vector<TrainResult> train_runs(const Model& model, const std::vector<PackedRun>& runs, torch::Device device,
                                           const TrainCallbacks& cb) {
  if (!model.module || !model.loss || !model.val_loss || !model.test_metric)
    throw examples::Error("train: the task's Model lacks a module, loss, val_loss or test_metric; set all four.");
  const bool packed = runs.size() > 1;
  if (packed && !model.row_losses)
    throw examples::Error("--pack: the task's Model has no row_losses, which packed training needs; run without --pack.");
  const auto& first = runs.front().settings;
  for (const auto& run : runs)
    if (packed && (!run.adapters || run.settings.epochs != first.epochs || run.settings.log_every != first.log_every))
      throw examples::Error("--pack: packed runs must be LoRA runs with the same epochs and log interval.");
  struct Live {
    std::unique_ptr<torch::optim::AdamW> opt;
    std::vector<Batch> batches;
    torch::Tensor epoch_sum, window;  // () sums of this epoch's losses and of those since the last read
    TrainResult r;
  };
  std::vector<Live> live(runs.size());
  for (size_t k = 0; k < runs.size(); ++k) live[k].opt = make_optimizer(model, runs[k].adapters, runs[k].settings);
  const auto going = [&](size_t k) { return !live[k].r.diverged; };
  const auto any_going = [&] {
    for (size_t k = 0; k < runs.size(); ++k)
      if (going(k)) return true;
    return false;
  };
  // The mean loss of each live run on step i (undefined tensors for stopped runs).
  const auto step_losses = [&](size_t i) {
    std::vector<torch::Tensor> losses(runs.size());
    if (!packed) {
      losses[0] = model.loss(to_device(live[0].batches[i], device));  // ()
      if (losses[0].dim() != 0)
        throw examples::Error("train: the task's loss must be a 0-d tensor (the batch mean), got shape " +
                              c10::str(losses[0].sizes()) + ".");
      return losses;
    }
    std::vector<const Batch*> parts;
    std::vector<std::string> rows;  // each row's adapter
    std::vector<std::pair<size_t, int64_t>> span;  // (run, rows)
    for (size_t k = 0; k < runs.size(); ++k) {
      if (!going(k)) continue;
      const auto* b = &live[k].batches[i];
      const int64_t n = b->begin()->second.size(0);
      parts.push_back(b);
      rows.insert(rows.end(), static_cast<size_t>(n), runs[k].adapters->name());
      span.emplace_back(k, n);
    }
    lora::RowRouting route(*model.module, rows);
    const auto [sum, count] = model.row_losses(to_device(concat_batches(parts), device));  // (N), (N)
    int64_t at = 0;
    for (const auto& [k, n] : span) {
      losses[k] = sum.narrow(/*dim=*/0, at, n).sum() / count.narrow(/*dim=*/0, at, n).sum();  // ()
      at += n;
    }
    return losses;
  };
  auto& module = *model.module;
  const auto scalar = torch::TensorOptions().dtype(torch::kFloat).device(device);
  const auto evaluate_run = [&](size_t k, const std::function<double()>& fn) {
    if (packed) runs[k].adapters->activate();  // the model as run k alone would have it
    return evaluate(module, fn);
  };
  int64_t steps_done = 0;  // steps of the pass (of every run still going)
  for (int64_t epoch = 0; epoch < first.epochs && any_going(); ++epoch) {
    module.train();
    size_t per_epoch_size = 0;
    for (size_t k = 0; k < runs.size(); ++k) {
      if (!going(k)) continue;
      live[k].batches = runs[k].epoch_batches(epoch);
      if (live[k].batches.empty())
        throw examples::Error("train: the task gave no training batch for epoch " + std::to_string(epoch + 1) +
                              "; check --train-size, --batch-size and the data.");
      if (per_epoch_size && live[k].batches.size() != per_epoch_size)
        throw examples::Error("--pack: packed runs have different numbers of batches per epoch.");
      per_epoch_size = live[k].batches.size();
      live[k].epoch_sum = torch::zeros({}, scalar);
      live[k].window = torch::zeros({}, scalar);
    }
    const auto per_epoch = static_cast<int64_t>(per_epoch_size);
    int64_t in_window = 0;
    for (int64_t i = 0; i < per_epoch && any_going(); ++i) {
      for (size_t k = 0; k < runs.size(); ++k)
        if (going(k)) live[k].opt->zero_grad();
      const auto losses = step_losses(static_cast<size_t>(i));
      torch::Tensor total;
      for (const auto& l : losses)
        if (l.defined()) total = total.defined() ? total + l : l;
      total.backward();
      for (size_t k = 0; k < runs.size(); ++k) {
        if (!going(k)) continue;
        if (runs[k].adapters) runs[k].adapters->step(*live[k].opt);
        else live[k].opt->step();
        const auto value = losses[k].detach().to(torch::kFloat);
        live[k].epoch_sum += value;
        live[k].window += value;
        ++live[k].r.steps;
      }
      ++steps_done;
      if (++in_window < first.log_every && i + 1 < per_epoch) continue;
      std::optional<double> shown;
      for (size_t k = 0; k < runs.size(); ++k) {
        if (!going(k)) continue;
        auto& r = live[k].r;
        const double mean = live[k].window.item<double>() / static_cast<double>(in_window);  // the one host read
        if (!std::isfinite(mean)) {
          r.diverged = true;
          r.diverged_reason = "training loss " + std::to_string(mean) + " over steps " +
                              std::to_string(i + 2 - in_window) + "-" + std::to_string(i + 1) + " of epoch " +
                              std::to_string(epoch + 1);
          continue;
        }
        live[k].window.zero_();
        r.curve_steps.push_back(r.steps);
        r.curve_losses.push_back(mean);
        if (!shown) shown = mean;
      }
      in_window = 0;
      if (cb.on_log && shown) cb.on_log(steps_done, steps_done - (i + 1) + (first.epochs - epoch) * per_epoch, *shown);
    }
    for (size_t k = 0; k < runs.size(); ++k) {
      if (!going(k)) continue;
      auto& r = live[k].r;
      const double train_loss = live[k].epoch_sum.item<double>() / static_cast<double>(per_epoch);
      const double val_loss = evaluate_run(k, model.val_loss);
      if (!std::isfinite(val_loss)) {
        r.diverged = true;
        r.diverged_reason = "validation loss " + std::to_string(val_loss) + " after epoch " + std::to_string(epoch + 1);
        continue;
      }
      r.train_losses.push_back(train_loss);
      r.val_losses.push_back(val_loss);
      r.best_val_loss = std::min(r.best_val_loss.value_or(val_loss), val_loss);
      if (cb.on_epoch && k == 0) cb.on_epoch(epoch + 1, train_loss, val_loss);
    }
  }
  std::vector<TrainResult> out;
  for (size_t k = 0; k < runs.size(); ++k) {
    auto& r = live[k].r;
    if (!r.diverged) {
      const double metric = evaluate_run(k, model.test_metric);
      if (std::isfinite(metric)) {
        r.test_metric = metric;
      } else {
        r.diverged = true;
        r.diverged_reason = "test metric " + std::to_string(metric) + " after the last epoch";
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace detail

/// Trains `model` for s.epochs epochs over the batches `epoch_batches(epoch)` gives (epoch from
/// 0), evaluating after each epoch and the test metric after the last. With `adapters` (LoRA)
/// each step is adapters->step(opt), which keeps torch::nn::Linear layers in sync; without
/// (FullFT) it is opt.step(). A NaN or infinite loss stops the run and marks it diverged.
inline TrainResult train(const Model& model, const lora::ModelAdapter* adapters,
                         const std::function<std::vector<Batch>(int64_t)>& epoch_batches, const TrainSettings& s,
                         torch::Device device, const TrainCallbacks& cb = {}) {
  return detail::train_runs(model, {PackedRun{adapters, s, epoch_batches}}, device, cb).front();
}

/// Trains several LoRA runs on one model in one pass (--pack): each run is an adapter of the
/// model (a ModelAdapter of its own name) with its own settings and batches; every step is
/// one forward/backward over all their rows, each row routed to its run's adapter
/// (detail::train_runs). Each result is what train() gives the run alone, up to float rounding,
/// when the model draws no random numbers in training (no dropout): with dropout the masks are
/// other draws of the same distribution. Returns one result per run, in order.
inline std::vector<TrainResult> train_packed(const Model& model, const std::vector<PackedRun>& runs,
                                             torch::Device device, const TrainCallbacks& cb = {}) {
  if (runs.empty()) throw examples::Error("train_packed: no run given.");
  return detail::train_runs(model, runs, device, cb);
}

/// The task's headline number.
struct Metric {
  std::string key = "test_acc";             ///< field name in results.json: "test_acc", "test_ppl"
  std::string label = "test accuracy (%)";  ///< axis and table label
  bool higher_is_better = true;
  bool log_scale = false;  ///< a ratio-scale value (perplexity): fitted and plotted in log10
};

/// When a finished run counts as collapsed: training failed although the loss stayed finite.
/// A run collapsed when it diverged (a non-finite loss), has no metric, or its metric is no
/// better than `bound`: chance accuracy for a classifier, the untrained base model's
/// perplexity for a language model. The optimum is fitted on runs that did not collapse; the
/// stability edge is the largest LR below the first collapse (analysis.hpp).
struct CollapseRule {
  double bound = NAN;             ///< NaN: only a diverged run (or one without a metric) collapsed
  bool higher_is_better = true;   ///< the metric's direction
  std::string description;        ///< e.g. "test_acc <= 30 (chance, 25%, + 5 points)"

  bool collapsed(const std::optional<double>& metric, bool diverged) const {
    if (diverged || !metric) return true;
    if (std::isnan(bound)) return false;
    return higher_is_better ? *metric <= bound : *metric >= bound;
  }
};

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
  /// When a finished run counts as collapsed (CollapseRule above). The default: only diverged runs.
  /// May load data (the WikiText task evaluates its base model once); called by the engine
  /// after each point and by the report.
  virtual CollapseRule collapse_rule() { return {}; }
  /// The weights this task's model layout may hold in one tensor under two names, and what
  /// FullFT does with them, or "" if the layout ties none. A property of the program, not read
  /// from the model's files: point settings are computed without them (point.hpp).
  virtual std::string tied_weights() const { return ""; }
  /// A fresh model with the base weights for point `p`. The engine has just seeded torch with
  /// p.seed (so a newly initialised head is reproducible); it then moves the module to the
  /// device and injects LoRA (LoRA points) or trains every parameter (FullFT).
  virtual Model make_model(const Point& p) = 0;
  /// The training batches of `epoch` (from 0) in order, on the CPU; shuffle with p.seed and epoch.
  virtual std::vector<Batch> train_batches(int64_t epoch, const Point& p) = 0;
};

}  // namespace sweep

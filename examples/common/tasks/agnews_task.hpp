// The seed study's AG-News task: DistilBertForSequenceClassification (4 labels) from a Hub
// folder, uncased WordPiece, the study's train/val split of the train file and the official
// test set; metric: test accuracy (%) of the final-epoch model.
#pragma once

#include <torch/nn/functional/loss.h>

#include <memory>
#include <string>
#include <vector>

#include "data/agnews.hpp"
#include "models/checkpoint.hpp"
#include "sweep/cli.hpp"
#include "sweep/grid.hpp"
#include "sweep/task.hpp"
#include "tasks/common.hpp"
#include "text/wordpiece.hpp"

namespace tasks {

class AgNewsTask : public sweep::Task {
 public:
  explicit AgNewsTask(sweep::Options o) : o_(std::move(o)) {}

  std::string name() const override { return "agnews"; }
  std::string model_name() const override { return fs::path(o_.model_dir).filename().string(); }
  sweep::Metric metric() const override { return {"test_acc", "test accuracy (%)", true}; }
  int64_t steps_per_epoch() const override { return (o_.train_size + o_.batch_size - 1) / o_.batch_size; }
  /// Collapsed: test accuracy within 5 points of chance (25%: AG-News's test set is balanced
  /// over 4 classes), i.e. the model predicts (nearly) one class. Runs that learned anything
  /// are far above it (the small base's weakest LoRA runs reach ~40%).
  sweep::CollapseRule collapse_rule() override {
    return {kChance + 5, /*higher_is_better=*/true, "test_acc <= 30 (chance, 25%, + 5 points)"};
  }

  /// Checks every file, then tokenizes the three splits once.
  void prepare() override {
    const fs::path data = fs::path(o_.data_dir) / "agnews";
    // The full train.csv (fetch-assets.sh) or the 14,995-row subset the shared data holds.
    const auto train_file = first_existing({data / "train.csv", data / "train_subset_14995.csv"});
    const auto test_file = data / "test.csv";
    const fs::path model(o_.model_dir);
    require_files({model / "config.json", model / "model.safetensors", model / "vocab.txt", train_file, test_file},
                  o_.data_dir);
    text::WordPieceTokenizer tok(model / "vocab.txt");
    pad_id_ = tok.pad_id();
    data::SplitOptions split;
    split.train_size = static_cast<size_t>(o_.train_size);
    split.val_size = static_cast<size_t>(o_.val_size);
    const auto tv = data::load_agnews_train(train_file, split);
    auto test = data::read_agnews(test_file);
    const auto test_size = std::stoll(o_.extra.at("test-size"));
    if (test_size > 0 && static_cast<size_t>(test_size) < test.size()) test.resize(static_cast<size_t>(test_size));
    train_ = encode(tok, tv.train);
    val_ = encode(tok, tv.val);
    test_ = encode(tok, test);
  }

  sweep::Model make_model(const sweep::Point& p) override {
    auto loaded = models::load_distilbert(o_.model_dir, /*num_labels=*/4, p.seed);
    auto net = loaded.model.ptr();
    const auto device = sweep::device_of(o_);
    sweep::Model m;
    m.module = net;
    m.loss = [net](const sweep::Batch& b) {
      return torch::nn::functional::cross_entropy(net->forward(b.at("input_ids"), b.at("attention_mask")).logits,
                                                  b.at("labels"));  // ()
    };
    m.row_losses = [net](const sweep::Batch& b) {
      namespace F = torch::nn::functional;
      const auto logits = net->forward(b.at("input_ids"), b.at("attention_mask")).logits;  // (B, 4)
      const auto nll = F::cross_entropy(logits, b.at("labels"), F::CrossEntropyFuncOptions().reduction(torch::kNone));
      return std::make_pair(nll, torch::ones_like(nll));  // (B), (B)
    };
    m.val_loss = [this, net, device] {
      return sweep::weighted_mean(eval_batches(val_), device, [&](const sweep::Batch& b) {
        namespace F = torch::nn::functional;
        auto logits = net->forward(b.at("input_ids"), b.at("attention_mask")).logits;  // (B, 4)
        auto sum = F::cross_entropy(logits, b.at("labels"), F::CrossEntropyFuncOptions().reduction(torch::kSum));
        return std::make_pair(sum, torch::scalar_tensor(b.at("labels").size(0)));
      });
    };
    m.test_metric = [this, net, device] {
      return 100.0 * sweep::weighted_mean(eval_batches(test_), device, [&](const sweep::Batch& b) {
               auto logits = net->forward(b.at("input_ids"), b.at("attention_mask")).logits;  // (B, 4)
               auto correct = (logits.argmax(/*dim=*/1) == b.at("labels")).sum();
               return std::make_pair(correct, torch::scalar_tensor(b.at("labels").size(0)));
             });
    };
    return m;
  }

  std::vector<sweep::Batch> train_batches(int64_t epoch, const sweep::Point& p) override {
    auto opts = batch_options(/*shuffle=*/true);
    auto rng = epoch_rng(p.seed, epoch);
    std::vector<sweep::Batch> out;
    for (const auto& b : data::plan_batches(train_.lengths, opts, rng))
      out.push_back(named(data::collate_classification(train_.ids, train_.labels, b, opts)));
    return out;
  }

 private:
  struct Encoded {
    std::vector<std::vector<int64_t>> ids;
    std::vector<int64_t> labels, lengths;
  };

  Encoded encode(const text::WordPieceTokenizer& tok, const std::vector<data::Example>& rows) const {
    Encoded e;
    for (const auto& r : rows) {
      e.ids.push_back(tok.encode(r.text, /*add_special_tokens=*/true, static_cast<size_t>(o_.max_len)));
      e.labels.push_back(r.label);
    }
    e.lengths = data::lengths_of(e.ids);
    return e;
  }

  data::BatchOptions batch_options(bool shuffle) const {
    data::BatchOptions opts;
    opts.batch_size = o_.batch_size;
    opts.max_len = o_.max_len;
    opts.pad_id = pad_id_;
    opts.keep_last = true;  // [SEP]
    opts.shuffle = shuffle;
    apply_padding(o_.extra.at("padding"), opts);
    if (!shuffle) opts.bucket_batches = 0;
    return opts;
  }

  /// Evaluation batches: the whole split sorted by length (longest first) and cut into batches
  /// of 4x the training batch, so that each batch pads little. The order of evaluation does not
  /// change accuracy or the mean loss. Built once per call: cheap next to the forward passes.
  std::vector<sweep::Batch> eval_batches(const Encoded& e) const {
    auto opts = batch_options(/*shuffle=*/false);
    opts.batch_size = 4 * o_.batch_size;
    opts.bucket_batches = static_cast<int64_t>(e.ids.size()) / opts.batch_size + 1;  // one bucket: all of it
    std::mt19937_64 unused;
    std::vector<sweep::Batch> out;
    for (const auto& b : data::plan_batches(e.lengths, opts, unused))
      out.push_back(named(data::collate_classification(e.ids, e.labels, b, opts)));
    return out;
  }

  static constexpr double kChance = 25.0;  ///< % of 4 balanced classes
  sweep::Options o_;
  int64_t pad_id_ = 0;
  Encoded train_, val_, test_;
};

/// The command line of agnews_sweep: the shared flags, the study's defaults and presets.
inline sweep::ProgramSpec agnews_spec() {
  sweep::ProgramSpec s;
  s.name = "agnews_sweep";
  s.description =
      "LoRA vs full fine-tuning of DistilBERT on AG-News: test accuracy over learning rate x rank (the seed study)";
  s.model_subdir = "models/distilbert-base-uncased";
  s.defaults = {{"--max-len", {"512"}}};
  s.presets["quick"] = {"a few minutes on a laptop CPU: 1 epoch on 512 rows, 2 LoRA LRs at r16, FullFT at 2 LRs",
                        {{"--epochs", {"1"}}, {"--train-size", {"512"}}, {"--val-size", {"256"}},
                         {"--test-size", {"1000"}}, {"--ranks", {"16"}}, {"--lrs", {"1e-4", "1e-3"}},
                         {"--full-finetune", {}}, {"--full-lrs", {"3e-5", "1e-4"}}, {"--max-len", {"128"}}}};
  s.presets["seed"] = {"the seed study's alpha = 32 figure: 4 LRs x 4 ranks + FullFT at 4 LRs, 5 epochs",
                       {{"--lrs", {"1e-5", "3e-5", "1e-4", "3e-4"}}, {"--ranks", {"16", "32", "64", "128"}},
                        {"--alpha", {"32"}}, {"--full-finetune", {}}, {"--full-lrs", {"3e-6", "1e-5", "3e-5", "1e-4"}}}};
  s.presets["seed-alpha10r"] = {"the seed study's alpha = 10r figure (scale 10 at every rank)",
                                {{"--lrs", {"3e-6", "1e-5", "3e-5", "1e-4", "3e-4"}},
                                 {"--ranks", {"16", "32", "64", "128"}}, {"--alpha-per-rank", {"10"}},
                                 {"--full-finetune", {}}, {"--full-lrs", {"3e-6", "1e-5", "3e-5", "1e-4"}}}};
  s.presets["seed-gaussian"] = {"the seed study's gaussian A and B variant (collapses to chance)",
                                {{"--lrs", {"1e-5", "1e-4", "1e-3"}}, {"--ranks", {"16"}},
                                 {"--init", {"gaussian-gaussian"}}, {"--init-std", {"1"}}}};
  // The CPU-scale study (docs/results.md, scripts/reproduce-small.sh) on the small pretrained
  // DistilBERT of the shared fixtures (dim 128, 4 layers, 128 positions): 2,000 training rows,
  // 2 epochs (126 steps), 3 seeds. LR grids: half-decade steps, finer near each optimum.
  const sweep::FlagValues small = {{"--train-size", {"2000"}}, {"--val-size", {"1000"}}, {"--epochs", {"2"}},
                                   {"--max-len", {"128"}},    {"--seeds", {"1", "2", "3"}}};
  const auto with = [&small](const sweep::FlagValues& more) { return sweep::with_flags(small, more); };
  const std::vector<std::string> full_lrs = {"1e-4", "3e-4", "6e-4", "1e-3", "2e-3", "3e-3"};
  s.presets["small-alpha32"] = {"CPU-scale study, experiment 1: alpha 32 (scale 32/r), ranks 4 16 64, FullFT beside",
                                with({{"--ranks", {"4", "16", "64"}},
                                      {"--lrs", {"3e-4", "1e-3", "2e-3", "3e-3", "6e-3", "1e-2"}},
                                      {"--alpha", {"32"}},
                                      {"--full-lrs", full_lrs}})};
  s.presets["small-alpha10r"] = {"CPU-scale study, experiment 2: alpha = 10r (scale 10 at every rank)",
                                 with({{"--ranks", {"4", "16", "64"}},
                                       {"--lrs", {"3e-5", "1e-4", "3e-4", "6e-4", "1e-3", "2e-3", "3e-3", "6e-3"}},
                                       {"--alpha-per-rank", {"10"}},
                                       {"--full-lrs", full_lrs}})};
  // Gaussian A and B (A, B ~ N(0, sigma^2)) at three sigmas, r16, on experiment 1's LoRA grid:
  // sigma 1 (the seed's variant), 0.1 and 0.01 (where it stops collapsing).
  for (const char* sigma : {"1", "0.1", "0.01"})
    s.presets[std::string("small-gaussian-") + sigma] = {
        std::string("CPU-scale study, experiment 3: gaussian A and B with sigma ") + sigma + ", r16, alpha 32",
        with({{"--ranks", {"16"}},
              {"--lrs", {"3e-5", "1e-4", "3e-4", "1e-3", "2e-3", "3e-3", "6e-3", "1e-2"}},
              {"--alpha", {"32"}},
              {"--init", {"gaussian-gaussian"}},
              {"--init-std", {sigma}}})};
  // The study's second round (docs/results.md, experiments 6-10 there).
  // Alpha at fixed rank: r16 with alpha 8, 32, 128, 512 (scale 0.5, 2, 8, 32), each on a grid
  // that holds its optimum whether the optimum follows 1/scale or does not move, and its edge.
  s.presets["small-alpha-scan"] = {
      "CPU-scale study, second round: r16 at alpha 8, 32, 128, 512 (scale 0.5 to 32), FullFT beside",
      with({{"--ranks", {"16"}},
            {"--alphas", {"8", "32", "128", "512"}},
            {"--alpha-lrs",
             {"8:1e-3,2e-3,3e-3,6e-3,1e-2,2e-2,3e-2,6e-2", "32:3e-4,6e-4,1e-3,2e-3,3e-3,6e-3,1e-2",
              "128:1e-4,2e-4,3e-4,6e-4,1e-3,2e-3,3e-3,6e-3", "512:2e-5,3e-5,6e-5,1e-4,2e-4,3e-4,6e-4,1e-3,2e-3,3e-3"}},
            {"--full-lrs", full_lrs}})};
  // The cliff resolved: a fine grid (the E12 series: steps of at most 1.23x) around each
  // optimum and stability edge of experiment 1, 5 seeds.
  const std::vector<std::string> e12_full = {"4.7e-4", "5.6e-4", "6.8e-4", "8.2e-4", "1e-3", "1.2e-3",
                                             "1.5e-3", "1.8e-3", "2.2e-3", "2.7e-3", "3.3e-3"};
  const std::vector<std::string> e12_lora = {"1e-3",   "1.2e-3", "1.5e-3", "1.8e-3", "2.2e-3", "2.7e-3",
                                             "3.3e-3", "3.9e-3", "4.7e-3", "5.6e-3", "6.8e-3"};
  s.presets["small-fine"] = {"CPU-scale study, second round: FullFT and r4/r16/r64 (alpha 32) on a fine grid, 5 seeds",
                             with({{"--seeds", {"1", "2", "3", "4", "5"}},
                                   {"--ranks", {"4", "16", "64"}},
                                   {"--alpha", {"32"}},
                                   {"--lrs", e12_lora},
                                   {"--full-lrs", e12_full}})};
  // Why gaussian collapses: gaussian A and B with s B0 A0 subtracted from W (the model starts
  // at the base), sigma 1 and 0.1, on experiment 3's grid.
  for (const char* sigma : {"1", "0.1"})
    s.presets[std::string("small-gaussian-subtracted-") + sigma] = {
        std::string("CPU-scale study, second round: gaussian A and B (sigma ") + sigma +
            ") with the initial product subtracted from W, r16, alpha 32",
        with({{"--ranks", {"16"}},
              {"--lrs", {"3e-5", "1e-4", "3e-4", "1e-3", "2e-3", "3e-3", "6e-3", "1e-2"}},
              {"--alpha", {"32"}},
              {"--init", {"gaussian-subtracted"}},
              {"--init-std", {sigma}}})};
  // Like for like: FullFT without the embedding tables, and FullFT of the Linear layers only,
  // beside experiment 1's LoRA lines (same grid and settings: their points are reused).
  for (const char* what : {"no-embeddings", "linear"})
    s.presets[std::string("small-full-") + what] = {
        std::string("CPU-scale study, second round: FullFT with --full-train ") + what + " beside experiment 1's LoRA",
        with({{"--ranks", {"4", "16", "64"}},
              {"--lrs", {"3e-4", "1e-3", "2e-3", "3e-3", "6e-3", "1e-2"}},
              {"--alpha", {"32"}},
              {"--full-train", {what}},
              {"--full-lrs", {"3e-4", "6e-4", "1e-3", "2e-3", "3e-3", "6e-3", "1e-2", "2e-2"}}})};
  // Budget: 8 epochs (504 steps) instead of 2, at 5 LRs around each line's optimum.
  s.presets["small-budget"] = {"CPU-scale study, second round: 8 epochs (504 steps), FullFT and r4/r16/r64",
                               with({{"--epochs", {"8"}},
                                     {"--ranks", {"4", "16", "64"}},
                                     {"--alpha", {"32"}},
                                     {"--lrs", {"6e-4", "1e-3", "1.5e-3", "2.2e-3", "3.3e-3"}},
                                     {"--full-lrs", {"3e-4", "5e-4", "8.2e-4", "1.2e-3", "1.8e-3"}}})};
  s.add_flags = [](CLI::App& app, sweep::Options& o) {
    o.extra["padding"] = "dynamic";
    app.add_option("--padding", o.extra["padding"],
                   "dynamic (pad each random batch to its longest row), bucketed (length buckets: least padding), "
                   "fixed (every row to --max-len, as the seed study)")
        ->check(CLI::IsMember({"dynamic", "bucketed", "fixed"}));
    o.extra["test-size"] = "0";
    app.add_option("--test-size", o.extra["test-size"], "evaluate on the first N test rows (0: all 7,600)")
        ->check(CLI::NonNegativeNumber);
  };
  return s;
}

}  // namespace tasks

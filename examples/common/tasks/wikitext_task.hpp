// The WikiText task: distilgpt2 (GPT2LMHeadModel) from a Hub folder, GPT-2 byte-level BPE,
// wikitext-2-raw cut into blocks (data/wikitext.hpp documents exactly how); metric: test
// perplexity = exp(token-weighted mean NLL over every predicted token of the test split).
#pragma once

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "errors.hpp"
#include "data/wikitext.hpp"
#include "models/checkpoint.hpp"
#include "sweep/cli.hpp"
#include "sweep/grid.hpp"
#include "sweep/task.hpp"
#include "tasks/common.hpp"
#include "text/bpe.hpp"

namespace tasks {

class WikiTextTask : public sweep::Task {
 public:
  explicit WikiTextTask(sweep::Options o) : o_(std::move(o)) {}

  std::string name() const override { return "wikitext2"; }
  std::string model_name() const override { return fs::path(o_.model_dir).filename().string(); }
  std::string tied_weights() const override {
    return "lm_head.weight and transformer.wte.weight, tied unless the config says "
           "tie_word_embeddings false: one tensor, one AdamW update per step";
  }
  sweep::Metric metric() const override { return {"test_ppl", "test perplexity", false, /*log_scale=*/true}; }
  int64_t steps_per_epoch() const override { return (o_.train_size + o_.batch_size - 1) / o_.batch_size; }

  void prepare() override {
    const fs::path model(o_.model_dir);
    const auto files = split_files(o_.data_dir, o_.extra.at("train-split"));
    require_files({model / "config.json", model / "model.safetensors", model / "vocab.json", model / "merges.txt",
                   files.train, files.valid, files.test},
                  o_.data_dir);
    text::BpeTokenizer tok(model / "vocab.json", model / "merges.txt");
    pad_id_ = tok.eos_id();
    const auto encode = [&](const std::string& s) { return tok.encode(s); };
    const auto block = std::stoll(o_.extra.at("block-size"));
    train_ = first_blocks(data::load_wikitext(files.train, encode, block).blocks, o_.train_size, "--train-size");
    val_ = first_blocks(data::load_wikitext(files.valid, encode, block).blocks, o_.val_size, "--val-size");
    test_ = first_blocks(data::load_wikitext(files.test, encode, block).blocks, std::stoll(o_.extra.at("test-size")),
                         "--test-size");
  }

  /// Collapsed: test perplexity no better than the untrained base model's (fine-tuning made it
  /// worse), evaluated once per process on the same test blocks.
  sweep::CollapseRule collapse_rule() override {
    if (!base_ppl_) {
      if (test_.empty()) prepare();
      auto base = make_model(sweep::Point{});
      base.module->to(sweep::device_of(o_));
      base_ppl_ = sweep::detail::evaluate(*base.module, base.test_metric);
    }
    return {*base_ppl_, /*higher_is_better=*/false,
            "test_ppl >= " + sweep::detail::num(*base_ppl_) + " (the base model's, before fine-tuning)"};
  }

  sweep::Model make_model(const sweep::Point&) override {
    auto loaded = models::load_gpt2(o_.model_dir);
    auto net = loaded.model.ptr();
    const auto device = sweep::device_of(o_);
    sweep::Model m;
    m.module = net;
    m.loss = [net](const sweep::Batch& b) {
      return models::causal_lm_loss(net->forward(b.at("input_ids"), b.at("attention_mask")), b.at("labels"));  // ()
    };
    m.row_losses = [net](const sweep::Batch& b) {
      return models::causal_lm_row_nll(net->forward(b.at("input_ids"), b.at("attention_mask")), b.at("labels"));
    };
    auto mean_nll = [this, net, device](const std::vector<std::vector<int64_t>>& blocks) {
      return sweep::weighted_mean(eval_batches(blocks), device, [&](const sweep::Batch& b) {
        return models::causal_lm_nll_sum(net->forward(b.at("input_ids"), b.at("attention_mask")), b.at("labels"));
      });
    };
    m.val_loss = [this, mean_nll] { return mean_nll(val_); };
    m.test_metric = [this, mean_nll] { return std::exp(mean_nll(test_)); };
    return m;
  }

  std::vector<sweep::Batch> train_batches(int64_t epoch, const sweep::Point& p) override {
    auto opts = batch_options(/*shuffle=*/true);
    auto rng = epoch_rng(p.seed, epoch);
    std::vector<sweep::Batch> out;
    for (const auto& b : data::plan_batches(data::lengths_of(train_), opts, rng))
      out.push_back(named(data::collate_lm(train_, b, opts)));
    return out;
  }

 private:
  struct SplitFiles {
    fs::path train, valid, test;
  };

  /// The three files of --train-split: "train" and "valid" train on wikitext-2-raw's
  /// wiki.train.raw / wiki.valid.raw and evaluate on its valid and test files; "wt103-head"
  /// trains on the first 2.5 MiB of WikiText-103 train (tokenized format, disjoint from
  /// WikiText-2's validation and test articles) and evaluates on WikiText-2's tokenized
  /// wiki.valid.tokens and wiki.test.tokens, so that all three share one format.
  static SplitFiles split_files(const fs::path& data_dir, const std::string& split) {
    if (split == "wt103-head")
      return {data_dir / "corpus" / "wikitext103_train_head" / "wiki.train.tokens.head.txt",
              data_dir / "wikitext-2" / "wiki.valid.tokens", data_dir / "wikitext-2" / "wiki.test.tokens"};
    const fs::path raw = data_dir / "wikitext-2-raw";
    return {raw / ("wiki." + split + ".raw"), raw / "wiki.valid.raw", raw / "wiki.test.raw"};
  }

  /// The first `n` blocks (n <= 0: all); more than the split holds is an error naming the flag.
  static std::vector<std::vector<int64_t>> first_blocks(std::vector<std::vector<int64_t>> blocks, int64_t n,
                                                        const char* flag) {
    if (n > static_cast<int64_t>(blocks.size()))
      throw examples::DataError(examples::str(flag, " ", n, " asks for more blocks than the split holds (",
                                                  blocks.size(), " at this --block-size). Lower it, or 0 for all."));
    if (n > 0) blocks.resize(static_cast<size_t>(n));
    return blocks;
  }

  data::BatchOptions batch_options(bool shuffle) const {
    data::BatchOptions opts;
    opts.batch_size = o_.batch_size;
    opts.max_len = std::stoll(o_.extra.at("block-size"));
    opts.pad_id = pad_id_;
    opts.shuffle = shuffle;
    return opts;
  }

  std::vector<sweep::Batch> eval_batches(const std::vector<std::vector<int64_t>>& blocks) const {
    auto opts = batch_options(/*shuffle=*/false);
    std::mt19937_64 unused;
    std::vector<sweep::Batch> out;
    for (const auto& b : data::plan_batches(data::lengths_of(blocks), opts, unused))
      out.push_back(named(data::collate_lm(blocks, b, opts)));
    return out;
  }

  sweep::Options o_;
  int64_t pad_id_ = 0;
  std::vector<std::vector<int64_t>> train_, val_, test_;
  std::optional<double> base_ppl_;  ///< the base model's test perplexity (collapse_rule)
};

/// The command line of wikitext_sweep.
inline sweep::ProgramSpec wikitext_spec() {
  sweep::ProgramSpec s;
  s.name = "wikitext_sweep";
  s.description =
      "LoRA vs full fine-tuning of distilgpt2 on WikiText-2: test perplexity over learning rate x rank. "
      "--train-size and --val-size count blocks of --block-size tokens";
  s.model_subdir = "models/distilgpt2";
  s.defaults = {{"--targets", {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"}},
                {"--lrs", {"1e-5", "3e-5", "1e-4", "3e-4", "1e-3"}},
                {"--train-size", {"0"}},
                {"--val-size", {"0"}}};
  s.presets["quick"] = {"a few minutes on a laptop CPU: 1 epoch on 64 blocks, 2 LoRA LRs at r16, FullFT at 2 LRs",
                        {{"--epochs", {"1"}}, {"--train-size", {"64"}}, {"--val-size", {"32"}},
                         {"--ranks", {"16"}}, {"--lrs", {"3e-4", "1e-3"}}, {"--full-finetune", {}},
                         {"--full-lrs", {"3e-5", "1e-4"}}}};
  s.presets["seed"] = {"the seed study's figure: LoRA at 5 LRs x 4 ranks + FullFT at 5 LRs, 5 epochs",
                       {{"--lrs", {"1e-5", "3e-5", "1e-4", "3e-4", "1e-3"}}, {"--ranks", {"16", "32", "64", "128"}},
                        {"--alpha", {"32"}}, {"--full-finetune", {}},
                        {"--full-lrs", {"3e-6", "1e-5", "3e-5", "1e-4", "3e-4"}}}};
  s.presets["seed-lm-head"] = {"the seed's probable setting: only the tied lm_head adapted",
                               {{"--targets", {"lm_head"}}}};
  // The CPU-scale study (docs/results.md, scripts/reproduce-small.sh) on the small pretrained
  // GPT-2 of the shared fixtures (n_embd 128, 4 layers, pretrained on news only): trained on
  // 1,600 blocks of 128 tokens of WikiText-103 train text, 1 epoch of 100 steps at batch 16,
  // evaluated on WikiText-2 validation (200 blocks) and test (400 blocks); 3 seeds.
  const sweep::FlagValues small = {{"--train-split", {"wt103-head"}}, {"--block-size", {"128"}},
                                   {"--train-size", {"1600"}},         {"--val-size", {"200"}},
                                   {"--test-size", {"400"}},           {"--epochs", {"1"}},
                                   {"--batch-size", {"16"}},           {"--seeds", {"1", "2", "3"}},
                                   {"--alpha", {"32"}},                {"--full-lrs", {"1e-4", "3e-4", "1e-3", "3e-3", "1e-2"}},
                                   {"--lrs", {"3e-4", "1e-3", "3e-3", "1e-2", "3e-2"}}};
  const auto with = [&small](const sweep::FlagValues& more) { return sweep::with_flags(small, more); };
  s.presets["small"] = {"CPU-scale study, experiment 4: LoRA on GPT-2's projections at ranks 4 and 64, FullFT beside",
                        with({{"--ranks", {"4", "64"}}})};
  s.presets["small-lm-head"] = {"CPU-scale study, experiment 4: LoRA on the tied lm_head only (r16), FullFT beside",
                                with({{"--ranks", {"16"}}, {"--targets", {"lm_head"}}})};
  // The study's second round: experiment 4 on a fine grid (the E12 series, steps of at most
  // 1.23x) around each line's first-round optimum, 5 seeds, so that the least-squares optimum
  // has points within half a decade of the best.
  const std::vector<std::string> fine_full = {"6.8e-4", "8.2e-4", "1e-3",   "1.2e-3", "1.5e-3",
                                              "1.8e-3", "2.2e-3", "2.7e-3", "3.3e-3"};
  s.presets["small-fine"] = {
      "CPU-scale study, second round: experiment 4's projections (r4, r64) and FullFT on a fine grid, 5 seeds",
      with({{"--seeds", {"1", "2", "3", "4", "5"}},
            {"--ranks", {"4", "64"}},
            {"--lrs", {"1e-3", "1.2e-3", "1.5e-3", "1.8e-3", "2.2e-3", "2.7e-3", "3.3e-3", "3.9e-3", "4.7e-3",
                       "5.6e-3", "6.8e-3"}},
            {"--full-lrs", fine_full}})};
  s.presets["small-lm-head-fine"] = {
      "CPU-scale study, second round: the lm_head adapter (r16) and FullFT on a fine grid, 5 seeds",
      with({{"--seeds", {"1", "2", "3", "4", "5"}},
            {"--ranks", {"16"}},
            {"--targets", {"lm_head"}},
            {"--lrs", {"2.7e-3", "3.3e-3", "3.9e-3", "4.7e-3", "5.6e-3", "6.8e-3", "8.2e-3", "1e-2", "1.2e-2", "1.5e-2"}},
            {"--full-lrs", fine_full}})};
  s.add_flags = [](CLI::App& app, sweep::Options& o) {
    o.extra["block-size"] = "128";
    app.add_option("--block-size", o.extra["block-size"], "tokens per block (training, validation and test)")
        ->check(CLI::PositiveNumber);
    o.extra["test-size"] = "0";
    app.add_option("--test-size", o.extra["test-size"], "evaluate on the first N test blocks (0: the whole split)")
        ->check(CLI::NonNegativeNumber);
    o.extra["train-split"] = "train";
    app.add_option("--train-split", o.extra["train-split"],
                   "the text to train on: train (wikitext-2-raw/wiki.train.raw), wt103-head (the first 2.5 MiB of "
                   "WikiText-103 train in corpus/wikitext103_train_head/, disjoint from validation and test, which "
                   "then come from wikitext-2/wiki.{valid,test}.tokens), or valid (wiki.valid.raw, a stand-in for "
                   "tests only: validation then overlaps training)")
        ->check(CLI::IsMember({"train", "wt103-head", "valid"}));
  };
  return s;
}

}  // namespace tasks

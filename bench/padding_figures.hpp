// lora_bench's padding figure: an AG-News training epoch (LoRA, real WordPiece tokens) padded to
// 512, as the seed study did, against dynamic padding with length bucketing, extrapolated from
// timed steps in one worker process.
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <data/agnews.hpp>
#include <data/batching.hpp>
#include <text/wordpiece.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "figures.hpp"
#include "options.hpp"
#include "timing.hpp"
#include "trainer.hpp"
#include "worker.hpp"

namespace bench {

struct PaddingState {
  std::shared_ptr<Trainer> trainer;
  std::vector<std::vector<int64_t>> seqs;
  std::vector<int64_t> labels, lengths;
  std::vector<std::vector<size_t>> fixed, dynamic;
  data::BatchOptions fixed_opts, dynamic_opts;
};

/// The padding worker's commands: "info" (the two batch plans), "step" (one timed LoRA step on
/// batch `index` of plan "fixed" or "dynamic").
inline Handler padding_handler(const Options& o) {
  auto st = std::make_shared<PaddingState>();
  const auto agnews = o.shared_dir / "data" / "agnews" / "train_subset_14995.csv";
  const auto vocab = o.shared_dir / "data" / "tokenizers" / "bert-base-uncased" / "vocab.txt";
  data::SplitOptions split;  // the study's: 10,000 train rows, seed 42 (no validation rows needed)
  split.val_size = 0;
  const auto train = data::load_agnews_train(agnews, split).train;
  const text::WordPieceTokenizer tok(vocab);
  const auto t0 = clock_type::now();
  for (const auto& ex : train) {
    st->seqs.push_back(tok.encode(ex.text, true, 512));
    st->labels.push_back(ex.label);
  }
  const double tokenize_s = seconds_since(t0);
  st->lengths = data::lengths_of(st->seqs);
  st->fixed_opts.batch_size = st->dynamic_opts.batch_size = 32;
  st->fixed_opts.max_len = st->dynamic_opts.max_len = 512;
  st->fixed_opts.keep_last = st->dynamic_opts.keep_last = true;
  st->fixed_opts.padding = data::Padding::Fixed;  // the seed study: every row padded to 512
  st->dynamic_opts.padding = data::Padding::Dynamic;
  st->dynamic_opts.bucket_batches = 50;
  std::mt19937_64 rng_a(42), rng_b(42);
  st->fixed = data::plan_batches(st->lengths, st->fixed_opts, rng_a);
  st->dynamic = data::plan_batches(st->lengths, st->dynamic_opts, rng_b);
  st->trainer = make_trainer(Side::lora, o, model_config(o));
  auto describe = [st](const std::vector<std::vector<size_t>>& plan, const data::BatchOptions& bo) {
    std::vector<int64_t> widths;
    int64_t positions = 0;
    for (const auto& b : plan) {
      widths.push_back(data::batch_width(st->lengths, b, bo));
      positions += widths.back() * static_cast<int64_t>(b.size());
    }
    return json{{"batches", plan.size()},
                {"positions", positions},
                {"padding", data::padding_count(st->lengths, plan, bo)},
                {"widths", widths}};
  };
  int64_t real = 0;
  for (auto l : st->lengths) real += std::min<int64_t>(l, 512);
  json info = {{"rows", st->seqs.size()},
               {"tokens", real},
               {"tokenize_s", tokenize_s},
               {"fixed", describe(st->fixed, st->fixed_opts)},
               {"dynamic", describe(st->dynamic, st->dynamic_opts)}};
  return [st, info](const json& cmd) -> json {
    const auto op = cmd.at("op").get<std::string>();
    if (op == "info") return info;
    if (op == "step") {
      const bool fixed = cmd.at("plan").get<std::string>() == "fixed";
      const auto& plan = fixed ? st->fixed : st->dynamic;
      const auto& bo = fixed ? st->fixed_opts : st->dynamic_opts;
      const auto& idx = plan.at(cmd.at("index").get<size_t>());
      auto b = data::collate_classification(st->seqs, st->labels, idx, bo);
      const torch::Device d = st->trainer->device;
      double loss = 0;
      const double s = st->trainer->step(b.input_ids.to(d), b.attention_mask.to(d), b.labels.to(d), &loss);
      return {{"s", s}, {"width", b.input_ids.size(1)}, {"loss", loss}};
    }
    throw std::runtime_error("unknown op " + op);
  };
}

/// Runs the padding figure into `figs` and `details`.
inline void measure_padding(const Options& o, Figures& figs, json& details) {
  fmt::print("\n[padding] AG-News train epoch (10,000 rows, batch 32), LoRA, padded to 512 vs dynamic + bucketing\n");
  std::fflush(stdout);
  Worker w("padding", [o] { return padding_handler(o); }, o);
  const auto info = w.call({{"op", "info"}});
  const auto widths = info["dynamic"]["widths"].get<std::vector<int64_t>>();
  const size_t n = widths.size();
  // Dynamic side: K batches at evenly spaced width quantiles (each stands for n/K batches of
  // similar width), so the sum estimates the epoch with little sampling error.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return widths[a] < widths[b]; });
  const int K = o.quick ? 6 : 12, M = o.quick ? 1 : 2;
  w.call({{"op", "step"}, {"plan", "dynamic"}, {"index", order[n / 2]}});  // warm-up
  double dyn_epoch = 0;
  json dyn_samples = json::array();
  for (int i = 0; i < K; ++i) {
    const size_t idx = order[static_cast<size_t>((i + 0.5) * static_cast<double>(n) / K)];
    settle();
    auto r = w.call({{"op", "step"}, {"plan", "dynamic"}, {"index", idx}});
    dyn_epoch += r["s"].get<double>() * static_cast<double>(n) / K;
    dyn_samples.push_back({{"width", r["width"]}, {"s", r["s"]}});
  }
  std::vector<double> fixed_t;
  w.call({{"op", "step"}, {"plan", "fixed"}, {"index", M}});  // warm-up: the first 512-wide step maps its memory
  for (int i = 0; i < M; ++i) {
    settle();
    auto r = w.call({{"op", "step"}, {"plan", "fixed"}, {"index", i}});
    fixed_t.push_back(r["s"].get<double>());
  }
  w.finish();
  const double fixed_epoch = median(fixed_t) * static_cast<double>(info["fixed"]["batches"].get<size_t>());
  figs("dynamic_padding_speedup").value = fixed_epoch / dyn_epoch;
  const double pos_fixed = info["fixed"]["positions"].get<double>(), pos_dyn = info["dynamic"]["positions"].get<double>();
  details["padding"] = {{"rows", info["rows"]},
                        {"real_tokens", info["tokens"]},
                        {"batches", n},
                        {"positions_fixed", pos_fixed},
                        {"positions_dynamic", pos_dyn},
                        {"tokenize_s", info["tokenize_s"]},
                        {"fixed_step_s", fixed_t},
                        {"dynamic_samples", dyn_samples},
                        {"epoch_fixed_s", fixed_epoch},
                        {"epoch_dynamic_s", dyn_epoch}};
  fmt::print("  {} rows, {} real tokens; positions fed: {:.0f} padded to 512, {:.0f} dynamic ({:.1f}x fewer)\n",
             info["rows"].get<int64_t>(), info["tokens"].get<int64_t>(), pos_fixed, pos_dyn, pos_fixed / pos_dyn);
  fmt::print("  step at 512: {:.2f} s (median of {}); dynamic steps sampled at {} width quantiles\n", median(fixed_t), M, K);
  fmt::print("  epoch ({} steps), extrapolated: padded to 512 {:.0f} s, dynamic {:.0f} s\n", n, fixed_epoch, dyn_epoch);
  std::fflush(stdout);
}

}  // namespace bench

// lora_bench's training figures: FullFT, LoRA (lora::Linear), LoRA on the compatibility path
// (torch::nn::Linear) and BitFit, each in its own worker process, stepping in turns on the same
// fixed batches: the step-time ratios, the peak-RSS ratio, and the FullFT step's share of the
// machine's sgemm rate.
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "figures.hpp"
#include "options.hpp"
#include "timing.hpp"
#include "trainer.hpp"
#include "worker.hpp"

namespace bench {

/// FLOPs of one training step (forward + backward = 3x forward) of the classification model:
/// the matrix products only (projections, attention scores and context, FFN, head).
inline double train_step_flops(const models::DistilBertConfig& c, int64_t B, int64_t T) {
  const double N = static_cast<double>(B * T), C = c.dim, H = c.hidden_dim;
  const double layer = 2 * N * (4 * C * C + 2 * C * H) + 4 * N * static_cast<double>(T) * C;
  const double head = 2 * static_cast<double>(B) * (C * C + C * static_cast<double>(c.num_labels));
  return 3 * (static_cast<double>(c.n_layers) * layer + head);
}

/// The fixed batches every side trains on: random token ids (no padding), random labels.
struct FixedBatches {
  std::vector<torch::Tensor> ids, mask, labels;
  FixedBatches(const Options& o, const models::DistilBertConfig& cfg, int n) {
    auto gen = at::detail::createCPUGenerator(1234);
    const torch::Device d(o.device);
    for (int i = 0; i < n; ++i) {
      ids.push_back(at::randint(1000, cfg.vocab_size, {o.batch, o.tokens}, gen, torch::kLong).to(d));
      mask.push_back(torch::ones({o.batch, o.tokens}, torch::kLong).to(d));
      labels.push_back(at::randint(0, cfg.num_labels, {o.batch}, gen, torch::kLong).to(d));
    }
  }
};


/// Rate of the sgemm shape (rows x k) x (k x n) as F::linear runs it (x W^T), GFLOP/s: median
/// of `reps` after a warm-up.
inline double sgemm_gflops(int64_t rows, int64_t k, int64_t n, const torch::Device& d, int reps = 5) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(7);
  auto x = at::randn({rows, k}, gen, torch::kFloat).to(d), w = at::randn({n, k}, gen, torch::kFloat).to(d);
  auto y = torch::mm(x, w.t());
  synchronize(d);
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = clock_type::now();
    torch::mm_out(y, x, w.t());
    synchronize(d);
    s.push_back(seconds_since(t0));
  }
  return 2.0 * static_cast<double>(rows) * static_cast<double>(k) * static_cast<double>(n) / median(s) / 1e9;
}

/// A training worker's commands: "step" (one timed step on fixed batch i), "sgemm" (the rate
/// of the step's two product shapes), "info" (trainable parameters, the compatibility check).
inline Handler train_handler(Side side, const Options& o) {
  const auto cfg = model_config(o);
  auto t = make_trainer(side, o, cfg);
  auto batches = std::make_shared<FixedBatches>(o, cfg, 3);
  double check = -1;
  if (side == Side::compat) check = plain_model_check();
  return [t, batches, o, cfg, check](const json& cmd) -> json {
    const auto op = cmd.at("op").get<std::string>();
    if (op == "step") {
      const auto i = cmd.value("i", 0) % static_cast<int>(batches->ids.size());
      double loss = 0;
      const double s = t->step(batches->ids[i], batches->mask[i], batches->labels[i], &loss);
      return {{"s", s}, {"loss", loss}};
    }
    if (op == "sgemm") {
      const int64_t N = o.batch * o.tokens;
      return {{"ffn_gflops", sgemm_gflops(N, cfg.dim, cfg.hidden_dim, t->device)},
              {"proj_gflops", sgemm_gflops(N, cfg.dim, cfg.dim, t->device)}};
    }
    if (op == "info") {
      int64_t trainable = 0;
      for (const auto& p : t->params) trainable += p.numel();
      return {{"trainable", trainable}, {"plain_model_max_diff", check}};
    }
    throw std::runtime_error("unknown op " + op);
  };
}

/// Runs the training figures into `figs` and `details`.
inline void measure_train(const Options& o, Figures& figs, json& details) {
  const auto cfg = model_config(o);
  fmt::print("\n[train] FullFT, LoRA (lora::Linear), LoRA (plain torch::nn::Linear, compat) and BitFit in turns\n");
  std::fflush(stdout);
  std::vector<Side> sides = {Side::fullft, Side::lora, Side::compat, Side::bitfit};
  std::vector<std::unique_ptr<Worker>> workers;
  for (auto s : sides)
    workers.push_back(std::make_unique<Worker>(side_name(s), [s, o] { return train_handler(s, o); }, o));
  const auto full_info = workers[0]->call({{"op", "info"}});
  const auto lora_info = workers[1]->call({{"op", "info"}});
  const auto compat_info = workers[2]->call({{"op", "info"}});
  const auto bitfit_info = workers[3]->call({{"op", "info"}});
  fmt::print("  trainable parameters: FullFT {}, LoRA {}, BitFit {}; torch::nn::Linear vs lora::Linear model max "
             "|diff| {:.2e}\n",
             full_info["trainable"].get<int64_t>(), lora_info["trainable"].get<int64_t>(),
             bitfit_info["trainable"].get<int64_t>(), compat_info["plain_model_max_diff"].get<double>());
  std::vector<double> gemm_ffn, gemm_proj;
  auto sgemm = [&] {
    settle();
    auto g = workers[0]->call({{"op", "sgemm"}});
    gemm_ffn.push_back(g["ffn_gflops"].get<double>());
    gemm_proj.push_back(g["proj_gflops"].get<double>());
  };
  sgemm();
  std::vector<std::vector<double>> times(sides.size());
  for (int round = 0; round < o.warmup + o.steps; ++round) {
    for (size_t k = 0; k < sides.size(); ++k) {
      settle();
      auto r = workers[k]->call({{"op", "step"}, {"i", round}});
      if (round >= o.warmup) times[k].push_back(r["s"].get<double>());
      fmt::print("  round {} {:<12} {:7.3f} s  loss {:.4f}{}\n", round, side_name(sides[k]), r["s"].get<double>(),
                 r["loss"].get<double>(), round < o.warmup ? "  (warm-up)" : "");
      std::fflush(stdout);
    }
  }
  sgemm();
  std::vector<json> ends;
  for (auto& w : workers) ends.push_back(w->finish());
  const double full = median(times[0]), lo = median(times[1]), compat = median(times[2]), bitfit = median(times[3]);
  const double flops = train_step_flops(cfg, o.batch, o.tokens);
  const double achieved = flops / full / 1e9, peak = median(gemm_ffn);
  // Ratios: the median over rounds of the ratio within a round (its steps ran back to back),
  // which a passing disturbance of the machine moves far less than a ratio of medians.
  figs("step_time_ratio").value = median_ratio(times[1], times[0]);
  figs("compat_path_step_ratio").value = median_ratio(times[2], times[1]);
  figs("bitfit_step_ratio").value = median_ratio(times[3], times[0]);
  figs("lora_vs_bitfit_step_ratio").value = median_ratio(times[1], times[3]);
  figs("peak_rss_ratio").value = ends[1]["vm_hwm_mib"].get<double>() / ends[0]["vm_hwm_mib"].get<double>();
  figs("fullft_sgemm_fraction").value = achieved / peak;
  details["train"] = {{"fullft_step_s", full},
                      {"lora_step_s", lo},
                      {"compat_step_s", compat},
                      {"bitfit_step_s", bitfit},
                      {"fullft_steps_s", times[0]},
                      {"lora_steps_s", times[1]},
                      {"compat_steps_s", times[2]},
                      {"bitfit_steps_s", times[3]},
                      {"fullft_peak_rss_mib", ends[0]["vm_hwm_mib"]},
                      {"lora_peak_rss_mib", ends[1]["vm_hwm_mib"]},
                      {"compat_peak_rss_mib", ends[2]["vm_hwm_mib"]},
                      {"rss_at_fork_mib", workers[0]->info()["rss_at_start_mib"]},
                      {"fullft_trainable", full_info["trainable"]},
                      {"lora_trainable", lora_info["trainable"]},
                      {"bitfit_trainable", bitfit_info["trainable"]},
                      {"step_gflop", flops / 1e9},
                      {"fullft_gflops", achieved},
                      {"sgemm_ffn_gflops", gemm_ffn},
                      {"sgemm_proj_gflops", gemm_proj},
                      {"plain_model_max_diff", compat_info["plain_model_max_diff"]},
                      {"allocator_fullft", ends[0]},
                      {"allocator_lora", ends[1]},
                      {"allocator_compat", ends[2]},
                      {"allocator_bitfit", ends[3]}};
  fmt::print("  median step: FullFT {:.3f} s, LoRA {:.3f} s, LoRA compat {:.3f} s, BitFit {:.3f} s\n", full, lo, compat,
             bitfit);
  fmt::print("  peak RSS: FullFT {:.0f} MiB, LoRA {:.0f} MiB, compat {:.0f} MiB (each process; {:.0f} MiB at fork)\n",
             ends[0]["vm_hwm_mib"].get<double>(), ends[1]["vm_hwm_mib"].get<double>(),
             ends[2]["vm_hwm_mib"].get<double>(), workers[0]->info()["rss_at_start_mib"].get<double>());
  fmt::print("  FullFT step {:.1f} GFLOP in {:.3f} s = {:.1f} GFLOP/s; sgemm ({}x{} by {}x{}) {:.1f} GFLOP/s, "
             "({}x{} by {}x{}) {:.1f} GFLOP/s\n",
             flops / 1e9, full, achieved, o.batch * o.tokens, cfg.dim, cfg.dim, cfg.hidden_dim, peak,
             o.batch * o.tokens, cfg.dim, cfg.dim, cfg.dim, median(gemm_proj));
  std::fflush(stdout);
}

}  // namespace bench

// lora_bench's serving figures: one batch whose rows use K different adapters (K = 1, 4, 16;
// ranks 8 and 16 alternating), on a DistilBERT-small-shaped model (the study's small base:
// dim 128, 4 layers, 4 heads, FFN 512, vocab 30,522) with every Linear adapted, eval mode:
//   single  the batch through one active adapter (the ordinary forward: the bar to meet)
//   mixed   the same batch with each row routed to its own adapter (lora::RowRouting: one
//           gathered computation, lora/routing.hpp); row b uses adapter b mod K
//   grouped the same, each adapter's rows consecutive (a batch sorted by adapter: one product
//           per group)
//   loop    PEFT's way for mixed batches: one forward per adapter over its rows, results put
//           back in row order
// All in one worker process, in turns, on the same ids.
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <lora/lora.hpp>
#include <models/distilbert.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "figures.hpp"
#include "options.hpp"
#include "timing.hpp"
#include "worker.hpp"

namespace bench {

/// The adapters' names: "a0" .. "a15".
inline std::string serving_adapter(int64_t k) { return "a" + std::to_string(k); }
constexpr int64_t kServingAdapters = 16;

/// The worker: {"mode": "single" | "mixed" | "grouped" | "loop", "k": K}: one timed eval forward.
inline Handler serving_handler(const Options& o) {
  models::DistilBertConfig cfg;
  cfg.dim = 128, cfg.n_layers = 4, cfg.n_heads = 4, cfg.hidden_dim = 512, cfg.num_labels = 4;
  const torch::Device d(o.device);
  torch::manual_seed(0);
  models::DistilBertForSequenceClassification model(cfg);
  for (int64_t k = 0; k < kServingAdapters; ++k) {
    lora::Config c;
    c.adapter_name = serving_adapter(k);
    c.rank = k % 2 ? 16 : 8;
    c.alpha = 32;
    c.targets = {"all-linear"};
    c.adapt_output_head = true;
    c.allow_rank_above_min = true;  // the 4-output classifier
    c.seed = static_cast<uint64_t>(k);
    auto h = lora::inject(*model, c);
    torch::NoGradGuard no_grad;  // B = 0 would make every adapter a no-op in value
    for (auto& b : h.b_parameters()) b.normal_(0, 0.02);
  }
  model->to(d);
  model->eval();
  auto gen = at::detail::createCPUGenerator(7);
  const auto ids = at::randint(1000, cfg.vocab_size, {o.batch, o.tokens}, gen, torch::kLong).to(d);
  return [=](const json& cmd) mutable -> json {
    const auto mode = cmd.at("mode").get<std::string>();
    const auto K = cmd.at("k").get<int64_t>();
    torch::NoGradGuard no_grad;
    std::vector<std::string> rows;  // row b uses adapter b mod K ("grouped": rows sorted by adapter)
    for (int64_t b = 0; b < o.batch; ++b)
      rows.push_back(serving_adapter(mode == "grouped" ? b * std::min(K, o.batch) / o.batch : b % K));
    torch::Tensor out;
    synchronize(d);
    const auto t0 = clock_type::now();
    if (mode == "single") {
      lora::set_active_adapters(*model, {serving_adapter(0)});
      out = model(ids).logits;
    } else if (mode == "mixed" || mode == "grouped") {
      lora::RowRouting route(*model, rows);
      out = model(ids).logits;
    } else {  // one forward per adapter over its rows
      out = torch::empty({o.batch, cfg.num_labels}, ids.options().dtype(torch::kFloat));
      for (int64_t k = 0; k < std::min(K, o.batch); ++k) {  // adapters with rows (--quick: batch 8 < 16)
        const auto idx = torch::arange(k, o.batch, K, ids.options());
        lora::set_active_adapters(*model, {serving_adapter(k)});
        out.index_copy_(0, idx, model(ids.index_select(0, idx)).logits);
      }
    }
    synchronize(d);
    const double s = seconds_since(t0);
    return {{"s", s}, {"checksum", out.sum().item<double>()}};
  };
}

/// Runs the serving figures into `figs` and `details`.
inline void measure_serving(const Options& o, Figures& figs, json& details) {
  fmt::print("\n[serving] eval, batch {} x {}: one adapter, K adapters routed per row, and one forward per adapter\n",
             o.batch, o.tokens);
  std::fflush(stdout);
  Worker w("serving", [o] { return serving_handler(o); }, o);
  struct Case {
    std::string mode;
    int64_t k;
  };
  const std::vector<Case> cases = {{"single", 1}, {"mixed", 1}, {"mixed", 4},   {"loop", 4},
                                   {"mixed", 16}, {"loop", 16}, {"grouped", 16}};
  std::vector<std::vector<double>> t(cases.size());
  for (int round = 0; round < o.warmup + o.steps + 1; ++round)
    for (size_t i = 0; i < cases.size(); ++i) {
      settle();
      const auto r = w.call({{"mode", cases[i].mode}, {"k", cases[i].k}});
      if (round >= o.warmup) t[i].push_back(r["s"].get<double>());
    }
  w.finish();
  const double tokens = static_cast<double>(o.batch * o.tokens);
  json per_case = json::object();
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto name = cases[i].mode + "_k" + std::to_string(cases[i].k);
    per_case[name] = {{"median_s", median(t[i])}, {"tokens_per_s", tokens / median(t[i])}, {"steps_s", t[i]}};
    fmt::print("  {:<10} {:9.0f} tokens/s  (median {:.4f} s)\n", name, tokens / median(t[i]), median(t[i]));
  }
  figs("serving_mixed1_vs_single").value = median_ratio(t[1], t[0]);
  figs("serving_mixed4_vs_single").value = median_ratio(t[2], t[0]);
  figs("serving_mixed16_vs_single").value = median_ratio(t[4], t[0]);
  figs("serving_loop4_vs_mixed4").value = median_ratio(t[3], t[2]);
  figs("serving_loop16_vs_mixed16").value = median_ratio(t[5], t[4]);
  figs("serving_grouped16_vs_single").value = median_ratio(t[6], t[0]);
  details["serving"] = per_case;
}

}  // namespace bench

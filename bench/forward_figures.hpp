// lora_bench's inference figures: the eval forward of the base model, of the same model with an
// unmerged r=16 adapter, and with the adapter merged, in turns in one worker process.
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <lora/lora.hpp>
#include <models/distilbert.hpp>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "figures.hpp"
#include "options.hpp"
#include "timing.hpp"
#include "trainer.hpp"
#include "worker.hpp"

namespace bench {

/// The forward worker's command {"model": "base" | "unmerged" | "merged"}: one timed forward.
inline Handler forward_handler(const Options& o) {
  const auto cfg = model_config(o);
  const torch::Device d(o.device);
  torch::manual_seed(0);
  models::DistilBertForSequenceClassification base(cfg);
  torch::manual_seed(0);
  models::DistilBertForSequenceClassification adapted(cfg);  // the same weights
  auto adapters = std::make_shared<lora::ModelAdapter>(lora::inject(*adapted, lora_config(o)));
  // B = 0 at init would make the adapter a no-op in value (not in cost); give it values.
  {
    torch::NoGradGuard no_grad;
    for (auto& b : adapters->b_parameters()) b.normal_(0, 0.02);
  }
  base->to(d);
  adapted->to(d);
  base->eval();
  adapted->eval();
  auto gen = at::detail::createCPUGenerator(99);
  auto ids = at::randint(1000, cfg.vocab_size, {o.batch, o.tokens}, gen, torch::kLong).to(d);
  auto mask = torch::ones({o.batch, o.tokens}, torch::kLong).to(d);
  return [=](const json& cmd) mutable -> json {
    const auto which = cmd.at("model").get<std::string>();
    torch::NoGradGuard no_grad;
    auto& m = which == "base" ? base : adapted;
    if (which == "merged") adapters->merge();
    synchronize(d);
    const auto t0 = clock_type::now();
    auto out = m(ids, mask).logits;
    synchronize(d);
    const double s = seconds_since(t0);
    if (which == "merged") adapters->unmerge();
    return {{"s", s}, {"checksum", out.sum().item<double>()}};
  };
}

/// Runs the forward figures into `figs` and `details`.
inline void measure_forward(const Options& o, Figures& figs, json& details) {
  fmt::print("\n[forward] eval, no grad: base, unmerged adapter, merged adapter in turns\n");
  std::fflush(stdout);
  Worker w("forward", [o] { return forward_handler(o); }, o);
  std::vector<std::string> names = {"base", "unmerged", "merged"};
  std::vector<std::vector<double>> t(names.size());
  const int reps = o.steps + 1;
  for (int round = 0; round < o.warmup + reps; ++round)
    for (size_t k = 0; k < names.size(); ++k) {
      settle();
      auto r = w.call({{"model", names[k]}});
      if (round >= o.warmup) t[k].push_back(r["s"].get<double>());
    }
  w.finish();
  const double base = median(t[0]), un = median(t[1]), me = median(t[2]);
  figs("unmerged_forward_overhead").value = median_ratio(t[1], t[0]);
  figs("merged_forward_overhead").value = median_ratio(t[2], t[0]);
  details["forward"] = {{"base_s", base}, {"unmerged_s", un}, {"merged_s", me},
                        {"base_runs_s", t[0]}, {"unmerged_runs_s", t[1]}, {"merged_runs_s", t[2]}};
  fmt::print("  median forward ({} runs): base {:.3f} s, unmerged {:.3f} s, merged {:.3f} s\n", reps, base, un, me);
  std::fflush(stdout);
}

}  // namespace bench

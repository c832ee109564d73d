// lora_bench's layer-kind figures: LoRA on convolutions and on an embedding table, each on the
// drop-ins (lora::Conv2d, lora::Embedding) and on the compatibility path (plain torch::nn
// layers), against FullFT and the BitFit floor of the same model, each side in its own worker
// process, stepping in turns on the same fixed batch; and the eval forward of the CNN with its
// adapters unmerged and merged against the base.
//   cnn: 4 Conv2d (3 -> c -> 2c -> 2c -> 4c, 3x3, two of stride 2) and a Linear head, batch x 3 x
//        64 x 64 images (c = 64; --quick: c = 16, 32 x 32)
//   emb: an Embedding (30,522 x 256, DistilBERT's vocabulary) mean-pooled into two Linear
//        layers, batch x tokens ids: the embedding-heavy model
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <lora/lora.hpp>

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

/// The CNN, on `Conv` (lora::Conv2d or torch::nn::Conv2d) and `Lin` layers.
template <typename Conv, typename Lin>
struct KindsCnnImpl : torch::nn::Module {
  explicit KindsCnnImpl(int64_t c) {
    using O = torch::nn::Conv2dOptions;
    c1 = register_module("c1", Conv(O(3, c, 3).padding(1)));
    c2 = register_module("c2", Conv(O(c, 2 * c, 3).stride(2).padding(1)));
    c3 = register_module("c3", Conv(O(2 * c, 2 * c, 3).padding(1)));
    c4 = register_module("c4", Conv(O(2 * c, 4 * c, 3).stride(2).padding(1)));
    fc = register_module("fc", Lin(4 * c, 10));
  }
  torch::Tensor forward(const torch::Tensor& x) {  // (B, 3, H, W)
    auto h = torch::relu(c1(x));                    // (B, c, H, W)
    h = torch::relu(c2(h));                         // (B, 2c, H/2, W/2)
    h = torch::relu(c3(h));
    h = torch::relu(c4(h));                         // (B, 4c, H/4, W/4)
    return fc(h.mean({2, 3}));                      // (B, 10)
  }
  Conv c1{nullptr}, c2{nullptr}, c3{nullptr}, c4{nullptr};
  Lin fc{nullptr};
};

/// The embedding-heavy model, on `Emb` and `Lin` layers.
template <typename Emb, typename Lin>
struct KindsEmbImpl : torch::nn::Module {
  KindsEmbImpl() {
    emb = register_module("emb", Emb(30522, 256));
    fc1 = register_module("fc1", Lin(256, 256));
    fc2 = register_module("fc2", Lin(256, 4));
  }
  torch::Tensor forward(const torch::Tensor& ids) {            // (B, T)
    return fc2(torch::relu(fc1(emb(ids).mean(/*dim=*/1))));     // (B, 4)
  }
  Emb emb{nullptr};
  Lin fc1{nullptr}, fc2{nullptr};
};

/// One side of a kinds comparison in one process: the model, its input, its optimizer.
struct KindsTrainer {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor()> logits;
  torch::Tensor labels;
  lora::ModelAdapter adapters;
  bool adapted = false;
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> opt;
  torch::Device device{torch::kCPU};

  double step() {
    synchronize(device);
    const auto t0 = clock_type::now();
    for (auto& p : params) p.mutable_grad().reset();
    auto loss = torch::nn::functional::cross_entropy(logits(), labels);
    loss.backward();
    if (adapted) adapters.step(*opt);
    else opt->step();
    synchronize(device);
    return seconds_since(t0);
  }
};

/// The sides, in this order: FullFT, LoRA (drop-ins), LoRA (plain torch::nn), BitFit.
inline const std::vector<std::string>& kinds_sides() {
  static const std::vector<std::string> s = {"FullFT", "LoRA", "LoRA compat", "BitFit"};
  return s;
}

/// The trainer of `side` for `model` ("cnn" or "emb"): the same seeded weights on every side.
inline std::shared_ptr<KindsTrainer> make_kinds_trainer(const std::string& model, const std::string& side,
                                                        const Options& o) {
  auto t = std::make_shared<KindsTrainer>();
  t->device = torch::Device(o.device);
  const bool plain = side == "LoRA compat";
  auto gen = at::detail::createCPUGenerator(1234);
  torch::manual_seed(0);
  std::vector<std::string> targets;
  if (model == "cnn") {
    const int64_t c = o.quick ? 16 : 64, hw = o.quick ? 32 : 64;
    const auto x = at::randn({o.batch, 3, hw, hw}, gen).to(t->device);
    if (plain) {
      auto m = std::make_shared<KindsCnnImpl<torch::nn::Conv2d, torch::nn::Linear>>(c);
      t->module = m;
      t->logits = [m, x] { return m->forward(x); };
    } else {
      auto m = std::make_shared<KindsCnnImpl<lora::Conv2d, lora::Linear>>(c);
      t->module = m;
      t->logits = [m, x] { return m->forward(x); };
    }
    t->labels = at::randint(0, 10, {o.batch}, gen, torch::kLong).to(t->device);
    targets = {"c1", "c2", "c3", "c4", "fc"};
  } else {
    const auto ids = at::randint(1000, 30522, {o.batch, o.tokens}, gen, torch::kLong).to(t->device);
    if (plain) {
      auto m = std::make_shared<KindsEmbImpl<torch::nn::Embedding, torch::nn::Linear>>();
      t->module = m;
      t->logits = [m, ids] { return m->forward(ids); };
    } else {
      auto m = std::make_shared<KindsEmbImpl<lora::Embedding, lora::Linear>>();
      t->module = m;
      t->logits = [m, ids] { return m->forward(ids); };
    }
    t->labels = at::randint(0, 4, {o.batch}, gen, torch::kLong).to(t->device);
    targets = {"emb", "fc1", "fc2"};
  }
  t->module->to(t->device);
  t->module->train();
  if (side == "FullFT") {
    t->params = lora::unique_parameters(*t->module);
  } else if (side == "BitFit") {  // the biases of the layers LoRA adapts (embeddings have none)
    for (auto& p : t->module->parameters()) p.set_requires_grad(false);
    for (auto& p : t->module->named_parameters())
      if (p.key().size() > 5 && p.key().compare(p.key().size() - 5, 5, ".bias") == 0)
        t->params.push_back(p.value().set_requires_grad(true));
  } else {
    lora::Config c;
    c.rank = o.rank;
    c.alpha = o.alpha;
    c.targets = targets;
    c.allow_rank_above_min = true;  // the 4-output head at rank 16
    t->adapters = lora::inject(*t->module, c);
    t->adapted = true;
    t->params = t->adapters.parameters();
  }
  t->opt = std::make_unique<torch::optim::AdamW>(t->params, torch::optim::AdamWOptions(1e-4).weight_decay(1e-3));
  return t;
}

/// The forward worker of the CNN: {"model": "base" | "unmerged" | "merged"}, one timed eval forward.
inline Handler kinds_forward_handler(const Options& o) {
  auto base = make_kinds_trainer("cnn", "FullFT", o);
  auto adapted = make_kinds_trainer("cnn", "LoRA", o);
  {
    torch::NoGradGuard no_grad;  // B = 0 would be a no-op in value (not in cost)
    for (auto& b : adapted->adapters.b_parameters()) b.normal_(0, 0.02);
  }
  base->module->eval();
  adapted->module->eval();
  const torch::Device d(o.device);
  return [=](const json& cmd) -> json {
    const auto which = cmd.at("model").get<std::string>();
    torch::NoGradGuard no_grad;
    if (which == "merged") adapted->adapters.merge();
    synchronize(d);
    const auto t0 = clock_type::now();
    auto out = which == "base" ? base->logits() : adapted->logits();
    synchronize(d);
    const double s = seconds_since(t0);
    if (which == "merged") adapted->adapters.unmerge();
    return {{"s", s}, {"checksum", out.sum().item<double>()}};
  };
}

/// Runs the layer-kind figures into `figs` and `details`.
inline void measure_kinds(const Options& o, Figures& figs, json& details) {
  for (const std::string model : {"cnn", "emb"}) {
    fmt::print("\n[kinds] {}: FullFT, LoRA (drop-ins), LoRA (plain torch::nn, compat) and BitFit in turns\n",
               model == "cnn" ? "CNN (Conv2d x 4 + Linear)" : "embedding-heavy (30,522 x 256 + 2 Linear)");
    std::fflush(stdout);
    std::vector<std::unique_ptr<Worker>> workers;
    for (const auto& side : kinds_sides())
      workers.push_back(std::make_unique<Worker>(model + " " + side, [model, side, o] {
        auto t = make_kinds_trainer(model, side, o);
        return Handler([t](const json&) { return json{{"s", t->step()}}; });
      }, o));
    std::vector<std::vector<double>> times(workers.size());
    for (int round = 0; round < o.warmup + o.steps; ++round)
      for (size_t k = 0; k < workers.size(); ++k) {
        settle();
        const double s = workers[k]->call({{"op", "step"}})["s"].get<double>();
        if (round >= o.warmup) times[k].push_back(s);
      }
    for (auto& w : workers) w->finish();
    figs(model + "_lora_step_ratio").value = median_ratio(times[1], times[0]);
    figs(model + "_compat_step_ratio").value = median_ratio(times[2], times[0]);
    figs(model + "_lora_vs_bitfit").value = median_ratio(times[1], times[3]);
    details["kinds_" + model] = {{"fullft_step_s", median(times[0])}, {"lora_step_s", median(times[1])},
                                 {"compat_step_s", median(times[2])}, {"bitfit_step_s", median(times[3])},
                                 {"steps_s", times}};
    fmt::print("  median step: FullFT {:.4f} s, LoRA {:.4f} s, LoRA compat {:.4f} s, BitFit {:.4f} s\n",
               median(times[0]), median(times[1]), median(times[2]), median(times[3]));
  }
  fmt::print("\n[kinds] CNN eval forward: base, unmerged adapters, merged in turns\n");
  Worker w("cnn forward", [o] { return kinds_forward_handler(o); }, o);
  const std::vector<std::string> names = {"base", "unmerged", "merged"};
  std::vector<std::vector<double>> t(names.size());
  for (int round = 0; round < o.warmup + o.steps + 1; ++round)
    for (size_t k = 0; k < names.size(); ++k) {
      settle();
      const double s = w.call({{"model", names[k]}})["s"].get<double>();
      if (round >= o.warmup) t[k].push_back(s);
    }
  w.finish();
  figs("cnn_unmerged_forward_overhead").value = median_ratio(t[1], t[0]);
  figs("cnn_merged_forward_overhead").value = median_ratio(t[2], t[0]);
  details["kinds_cnn_forward"] = {{"base_s", median(t[0])}, {"unmerged_s", median(t[1])}, {"merged_s", median(t[2])}};
  fmt::print("  median forward: base {:.4f} s, unmerged {:.4f} s, merged {:.4f} s\n", median(t[0]), median(t[1]),
             median(t[2]));
  std::fflush(stdout);
}

}  // namespace bench

// What lora_bench trains: the examples' DistilBERT (models/distilbert.hpp) at
// distilbert-base's shape with random weights, the seed study's LoRA config, and a Trainer for
// each side of the comparisons: FullFT, LoRA (lora::Linear, the fast path), LoRA on the same
// model built with torch::nn::Linear (the compatibility path), and BitFit.
#pragma once

#include <torch/torch.h>

#include <lora/lora.hpp>
#include <models/distilbert.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "options.hpp"
#include "timing.hpp"

namespace bench {

inline models::DistilBertConfig model_config(const Options& o) {
  models::DistilBertConfig c;  // distilbert-base: dim 768, 12 heads, FFN 3072, vocab 30522
  c.n_layers = o.layers;
  c.num_labels = 4;  // AG-News
  return c;
}

/// The seed study's LoRA: every Linear including the output head, alpha 32 (the 4-output
/// classifier gets rank 4, the most a 4 x 768 layer allows).
inline lora::Config lora_config(const Options& o) {
  lora::Config c;
  c.rank = o.rank;
  c.alpha = o.alpha;
  c.targets = {"all-linear"};
  c.adapt_output_head = true;
  c.rank_pattern["classifier"] = std::min<int64_t>(o.rank, 4);
  return c;
}

enum class Side { fullft, lora, compat, bitfit };

inline const char* side_name(Side s) {
  switch (s) {
    case Side::fullft: return "FullFT";
    case Side::lora: return "LoRA";
    case Side::compat: return "LoRA compat";
    case Side::bitfit: return "BitFit";
  }
  return "?";
}

/// BitFit: every parameter frozen except the bias of each lora::Linear layer (the layers LoRA
/// adapts), so the backward pass reaches the same layers as LoRA's, without adapter products.
inline std::vector<torch::Tensor> bitfit_parameters(torch::nn::Module& m) {
  for (auto& p : m.parameters()) p.set_requires_grad(false);
  std::vector<torch::Tensor> biases;
  for (const auto& sub : m.modules())
    if (auto* lin = dynamic_cast<lora::LinearImpl*>(sub.get()); lin && lin->bias.defined())
      biases.push_back(lin->bias.set_requires_grad(true));
  return biases;
}

/// One training setup in one process: a model, its optimizer, and fixed batches.
struct Trainer {
  torch::Device device{torch::kCPU};
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> forward;  // ids, mask -> logits
  lora::ModelAdapter adapters;
  bool adapted = false;
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> opt;

  /// One AdamW step on (ids, mask, labels); returns seconds (synchronised).
  double step(const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor& labels, double* loss_out) {
    synchronize(device);
    const auto t0 = clock_type::now();
    for (auto& p : params) p.mutable_grad().reset();  // set_to_none: no memset, no accumulate
    auto loss = torch::nn::functional::cross_entropy(forward(ids, mask), labels);
    loss.backward();
    if (adapted)
      adapters.step(*opt);
    else
      opt->step();
    synchronize(device);
    const double s = seconds_since(t0);
    if (loss_out) *loss_out = loss.item<double>();  // after the clock: no sync inside the step
    return s;
  }
};

/// Builds the classification model of `cfg` with `Linear` projections into `t`, on its device.
template <typename Linear>
void place_model(Trainer& t, const models::DistilBertConfig& cfg) {
  models::DistilBertForSequenceClassificationT<Linear> m(cfg);
  m->to(t.device);
  t.module = m.ptr();
  t.forward = [m](const torch::Tensor& ids, const torch::Tensor& mask) mutable { return m(ids, mask).logits; };
}

/// The trainer of `side`: the model (seeded, the same weights on every side), what it trains,
/// and its optimizer.
inline std::shared_ptr<Trainer> make_trainer(Side side, const Options& o, const models::DistilBertConfig& cfg) {
  auto t = std::make_shared<Trainer>();
  t->device = torch::Device(o.device);
  torch::manual_seed(0);
  // The compatibility side: the same model with plain torch::nn::Linear projections.
  if (side == Side::compat)
    place_model<torch::nn::Linear>(*t, cfg);
  else
    place_model<lora::Linear>(*t, cfg);
  t->module->train();
  if (side == Side::fullft) {
    t->params = lora::unique_parameters(*t->module);
  } else if (side == Side::bitfit) {
    t->params = bitfit_parameters(*t->module);
  } else {
    t->adapters = lora::inject(*t->module, lora_config(o));
    t->adapted = true;
    t->params = t->adapters.parameters();
  }
  // The seed study's optimiser: AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0.001.
  t->opt = std::make_unique<torch::optim::AdamW>(t->params, torch::optim::AdamWOptions(1e-4).weight_decay(1e-3));
  return t;
}

/// max |a - b| between the examples' DistilBERT with torch::nn::Linear projections and with
/// lora::Linear ones, the same weights, in eval mode, on a small config: the compatibility side
/// computes the same function as the others.
inline double plain_model_check() {
  models::DistilBertConfig c;
  c.n_layers = 2, c.dim = 64, c.n_heads = 4, c.hidden_dim = 128, c.vocab_size = 100, c.num_labels = 4;
  torch::manual_seed(3);
  models::DistilBertForSequenceClassification a(c);
  models::DistilBertForSequenceClassificationT<torch::nn::Linear> b(c);
  {
    torch::NoGradGuard no_grad;
    auto src = a->named_parameters();
    for (auto& p : b->named_parameters()) p.value().copy_(src[p.key()]);
  }
  a->eval();
  b->eval();
  auto ids = torch::randint(0, c.vocab_size, {3, 9}, torch::kLong);
  auto mask = torch::ones({3, 9}, torch::kLong);
  mask.index_put_({0, torch::indexing::Slice(5)}, 0);
  torch::NoGradGuard no_grad;
  return (a(ids, mask).logits - b(ids, mask).logits).abs().max().item<double>();
}

}  // namespace bench

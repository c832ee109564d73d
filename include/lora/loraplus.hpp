// LoRA+ (Hayou, Ghosh and Yu 2024): B learns with a larger learning rate than A. The paper
// shows that with one learning rate for both, A or B is always trained inefficiently at large
// width; B's rate = ratio x A's (ratio ~ 16) fixes it and speeds up fine-tuning.
//
//   auto opt = lora::make_loraplus_adamw(adapters, torch::optim::AdamWOptions(2e-4), 16.0);
//
// As PEFT's create_loraplus_optimizer: A matrices at lr, B matrices and DoRA's magnitude
// vectors (PEFT puts every one-dimensional adapter parameter with B) at ratio x lr. Parameters
// kept trainable (Config::keep_trainable) stay at lr here (PEFT would give their biases
// ratio x lr too); every group takes the other options (betas, eps, weight decay) as given.
#pragma once

#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>

#include <cmath>
#include <memory>
#include <vector>

#include "model_adapter.hpp"
#include "error.hpp"

namespace lora {

/// The parameter groups of LoRA+ for `adapters`: {A at options.lr()}, {B and DoRA magnitudes at
/// ratio x options.lr()}, {kept-trainable parameters at options.lr()}; empty groups are left
/// out. Each group carries a copy of `options` with its learning rate.
inline std::vector<torch::optim::OptimizerParamGroup> loraplus_param_groups(const ModelAdapter& adapters,
                                                                            const torch::optim::AdamWOptions& options,
                                                                            double ratio) {
  if (!(ratio > 0) || !std::isfinite(ratio))
    throw ConfigError(detail::str("lora+: the learning-rate ratio of B to A must be a positive finite number, got ",
                                  ratio, ". The LoRA+ paper suggests about 16."));
  if (adapters.layers().empty())
    throw ConfigError(detail::str("lora+: adapter '", adapters.name(), "' has no layer (was it removed?)."));
  const double lr = options.lr();
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto add = [&](std::vector<torch::Tensor> params, double group_lr) {
    if (params.empty()) return;
    auto opts = std::make_unique<torch::optim::AdamWOptions>(options);
    opts->lr(group_lr);
    groups.emplace_back(std::move(params), std::move(opts));
  };
  auto b = adapters.b_parameters();
  for (auto& m : adapters.magnitude_parameters()) b.push_back(m);
  std::vector<torch::Tensor> kept;
  for (const auto& kv : adapters.kept_parameters()) kept.push_back(kv.second);
  add(adapters.a_parameters(), lr);
  add(std::move(b), lr * ratio);
  add(std::move(kept), lr);
  return groups;
}

/// torch::optim::AdamW over the LoRA+ groups of `adapters` (see loraplus_param_groups).
inline torch::optim::AdamW make_loraplus_adamw(const ModelAdapter& adapters, const torch::optim::AdamWOptions& options,
                                               double ratio) {
  return torch::optim::AdamW(loraplus_param_groups(adapters, options, ratio), options);
}

}  // namespace lora

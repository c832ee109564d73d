// The optimisation side of the pretraining recipe (/work/shared/pretraining.md):
//   - init_weights: Hugging Face's _init_weights for DistilBERT and GPT-2: weights of Linear
//     layers and embeddings normal(0, initializer_range), biases 0, LayerNorm 1 and 0, the
//     padding row of DistilBERT's word embeddings 0, GPT-2's c_proj weights (attention and
//     MLP) normal(0, initializer_range / sqrt(2 n_layer)); drawn in parameter order from a
//     CPU generator seeded with the run's seed (so not HF's numbers: another random stream);
//   - each parameter once (lora::unique_named_parameters: a tied weight, such as the output
//     projection that IS the word embedding matrix, is listed under its first name only);
//   - AdamW: torch.optim.AdamW's update (amsgrad off), with weight decay on the tensors of >= 2
//     dimensions only (none on biases and LayerNorm), whose state (step, exp_avg, exp_avg_sq
//     per parameter) can be saved and restored by name (pretrain/state.hpp);
//   - Schedule: linear warm-up, then cosine from 1 to min_ratio of the peak (HF's
//     get_cosine_with_min_lr_schedule_with_warmup: the factor for the step after `s` optimizer
//     steps is s / warmup during warm-up, so the first step runs at LR 0, as in HF).
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <lora/model.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"

namespace pretrain {

/// HF-style initialisation of every parameter of `model` (see the top of this file). `std_of`
/// gives the std of a weight (>= 2 dimensions) from its name; `padding` lists (embedding name,
/// row) pairs to zero afterwards.
inline void init_weights(torch::nn::Module& model, uint64_t seed, const std::function<double(const std::string&)>& std_of,
                         const std::vector<std::pair<std::string, int64_t>>& padding = {}) {
  torch::NoGradGuard no_grad;
  std::set<const void*> norm_weights, norm_biases;
  for (const auto& m : model.named_modules("", /*include_self=*/true))
    if (auto* ln = m.value()->as<torch::nn::LayerNormImpl>()) {
      if (ln->weight.defined()) norm_weights.insert(ln->weight.unsafeGetTensorImpl());
      if (ln->bias.defined()) norm_biases.insert(ln->bias.unsafeGetTensorImpl());
    }
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& [name, p] : lora::unique_named_parameters(model)) {
    const void* impl = p.unsafeGetTensorImpl();
    if (norm_weights.count(impl)) {
      p.fill_(1.0);
    } else if (p.dim() >= 2 && !norm_biases.count(impl)) {
      auto values = torch::empty(p.sizes(), torch::kFloat);
      values.normal_(0.0, std_of(name), gen);
      p.copy_(values);
    } else {
      p.zero_();
    }
  }
  const auto params = model.named_parameters(/*recurse=*/true);
  for (const auto& [name, row] : padding)
    if (const auto* p = params.find(name)) p->select(0, row).zero_();
}

/// AdamW's settings besides the learning rate, which the schedule sets each step.
struct AdamWSettings {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
};

/// AdamW over named parameters, as torch.optim.AdamW (amsgrad off) computes it:
///   p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
///   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
/// with wd = weight_decay for tensors of >= 2 dimensions and 0 for the others. A parameter
/// without a gradient is left alone (its step count t does not move).
class AdamW {
 public:
  struct Slot {
    std::string name;
    torch::Tensor param, exp_avg, exp_avg_sq;
    int64_t steps = 0;
    bool decay = false;
  };

  AdamW(const std::vector<std::pair<std::string, torch::Tensor>>& params, AdamWSettings s) : s_(s) {
    for (const auto& [name, p] : params) {
      Slot slot;
      slot.name = name;
      slot.param = p;
      slot.exp_avg = torch::zeros_like(p);
      slot.exp_avg_sq = torch::zeros_like(p);
      slot.decay = p.dim() >= 2;
      slots_.push_back(std::move(slot));
    }
  }

  /// One update at learning rate `lr`.
  void step(double lr) {
    torch::NoGradGuard no_grad;
    for (auto& slot : slots_) {
      const auto& g = slot.param.grad();
      if (!g.defined()) continue;
      ++slot.steps;
      const double wd = slot.decay ? s_.weight_decay : 0.0;
      if (wd != 0) slot.param.mul_(1.0 - lr * wd);
      slot.exp_avg.mul_(s_.beta1).add_(g, 1.0 - s_.beta1);
      slot.exp_avg_sq.mul_(s_.beta2).addcmul_(g, g, 1.0 - s_.beta2);
      const double bc1 = 1.0 - std::pow(s_.beta1, static_cast<double>(slot.steps));
      const double bc2 = 1.0 - std::pow(s_.beta2, static_cast<double>(slot.steps));
      const auto denom = (slot.exp_avg_sq.sqrt() / std::sqrt(bc2)).add_(s_.eps);
      slot.param.addcdiv_(slot.exp_avg, denom, -lr / bc1);
    }
  }

  void zero_grad() {
    for (auto& slot : slots_)
      if (slot.param.grad().defined()) slot.param.mutable_grad() = torch::Tensor();
  }

  std::vector<torch::Tensor> parameters() const {
    std::vector<torch::Tensor> out;
    for (const auto& slot : slots_) out.push_back(slot.param);
    return out;
  }

  std::vector<Slot>& slots() { return slots_; }
  const std::vector<Slot>& slots() const { return slots_; }
  const AdamWSettings& settings() const { return s_; }

 private:
  AdamWSettings s_;
  std::vector<Slot> slots_;
};

/// Linear warm-up, then cosine decay from the peak to min_ratio of it (see the top of this file).
struct Schedule {
  int64_t steps = 1;       ///< the schedule's length in optimizer steps
  int64_t warmup = 0;      ///< warm-up steps
  double min_ratio = 0.05; ///< the factor at the end of the cosine

  /// The LR factor for the optimizer step that follows `done` steps (0 <= done).
  double factor(int64_t done) const {
    if (done < warmup) return static_cast<double>(done) / static_cast<double>(std::max<int64_t>(1, warmup));
    const double progress =
        std::min(1.0, static_cast<double>(done - warmup) / static_cast<double>(std::max<int64_t>(1, steps - warmup)));
    const double cosine = 0.5 * (1.0 + std::cos(std::acos(-1.0) * progress));
    return std::max(0.0, min_ratio + (1.0 - min_ratio) * cosine);
  }
};

}  // namespace pretrain

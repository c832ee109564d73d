// DoRA (Liu et al. 2024; PEFT's use_dora) as a LoRA variant. Each adapter also learns a
// magnitude m (out), one value per output row, and the layer computes
//   y = (m / n) (x W^T + s (dropout(x) A^T) B^T) + b,   n = ||W + s B A||_row, detached
// (functional::add_dora). m starts as the row norms of W + s B A (W after any base-changing
// init), so the output is unchanged at step 0 whatever the init. A merge follows PEFT:
// W <- (m / n) (W + s B A), with the factor m / n kept so that unmerge inverts exactly that merge.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "../layer_adapter.hpp"
#include "../functional.hpp"
#include "../init.hpp"
#include "variant.hpp"

namespace lora::detail {

class Dora final : public Variant {
 public:
  /// m's holder on the layer ("lora_magnitude_vector.<name>.weight") and its key in state
  /// dicts and PEFT files: PEFT's names.
  static constexpr const char* kMagnitude = "lora_magnitude_vector";

  const char* name() const override { return "dora"; }
  const char* option() const override { return "use_dora"; }
  std::vector<AdapterTensor> extra_tensors() const override {
    return {{kMagnitude, kMagnitude, &LayerAdapter::magnitude,
             [](int64_t out, int64_t, int64_t) { return std::vector<int64_t>{out}; }}};  // (out)
  }

  void init(LayerAdapter& a, const InitContext& ctx, const torch::TensorOptions& options) const override {
    torch::NoGradGuard no_grad;
    auto norm = torch::addmm(ctx.weight, ctx.B, ctx.A, /*beta=*/1, /*alpha=*/ctx.scale).norm(2, {1});
    a.magnitude = norm.to(options).detach().set_requires_grad(true);
  }

  /// DoRA rescales the base output: with several adapters, each DoRA one replaces the base
  /// output's share of `y` by its rescaled version, (m/n - 1) x W^T + (m/n) s lora(x) more.
  bool needs_base_output() const override { return true; }
  torch::Tensor forward(const LayerAdapter& a, const torch::Tensor& y, const ForwardInput& in) const override {
    auto t = functional::add_dora(in.base, in.x, in.weight, a.A, a.B, a.magnitude, a.scale, a.dropout, in.training);
    return y.is_same(in.base) ? t : y + (t - in.base);
  }

  /// The merge rescales the whole weight, so it does not commute with the others.
  bool merge_adds() const override { return false; }
  torch::Tensor merge(const LayerAdapter& a, const torch::Tensor& weight) const override {
    torch::NoGradGuard no_grad;
    const auto W = weight.to(a.A.scalar_type());  // in the adapter's dtype, rounded once
    const auto norm = functional::dora_weight_norm(W, a.A, a.B, a.scale);
    const auto factor = (a.magnitude.detach().to(norm.dtype()) / norm).unsqueeze(1);  // (out, 1)
    weight.copy_((W + a.delta_weight()).mul_(factor));
    return factor;
  }
  void unmerge(const LayerAdapter& a, const torch::Tensor& weight, const torch::Tensor& factor) const override {
    torch::NoGradGuard no_grad;
    weight.copy_(weight.to(a.A.scalar_type()).div_(factor).sub_(a.delta_weight()));
  }
};

}  // namespace lora::detail

// lora::Linear: a drop-in for torch::nn::Linear (same options, parameters "weight" (out, in)
// and "bias" (out), so base checkpoints load unchanged) that can carry LoRA adapters:
//   y = x W^T + b + sum over active adapters of s * (dropout(x) A^T) B^T
// With no adapter (or adapters disabled) it computes exactly what torch::nn::Linear does.
// Adapters are added, chosen, merged and removed through its member functions (inject() calls
// them for you); adapter(name) reads one. Each adapter applies itself as its variant says
// (detail/variant.hpp): a plain LoRA one adds the term above, a DoRA one (LayerAdapterSpec::use_dora)
// rescales the base output (detail/dora.hpp).
#pragma once

#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>
#include <torch/nn/module.h>
#include <torch/nn/options/linear.h>
#include <torch/nn/pimpl.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "layer_adapter.hpp"
#include "detail/adapter_host.hpp"
#include "detail/variant.hpp"
#include "kinds/linear.hpp"

namespace lora {

class LinearImpl : public torch::nn::Module, public detail::AdapterHost {
 public:
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit LinearImpl(const torch::nn::LinearOptions& options_) : options(options_) { reset(); }

  /// Creates weight and bias exactly as torch::nn::Linear does. Adapters stay (with their A and
  /// B as they were); call remove_adapter() first to drop them.
  void reset() {
    weight = register_parameter("weight", torch::empty({options.out_features(), options.in_features()}));
    if (options.bias()) {
      bias = register_parameter("bias", torch::empty(options.out_features()));
    } else {
      bias = register_parameter("bias", {}, /*requires_grad=*/false);
    }
    reset_parameters();
  }

  void reset_parameters() {
    torch::nn::init::kaiming_uniform_(weight, std::sqrt(5));
    if (bias.defined()) {
      const auto fan_in = options.in_features();
      const auto bound = fan_in > 0 ? 1.0 / std::sqrt(static_cast<double>(fan_in)) : 0.0;
      torch::nn::init::uniform_(bias, -bound, bound);
    }
  }

  /// x (..., in) -> (..., out)
  torch::Tensor forward(const torch::Tensor& x) {
    const auto* r = detail::current_routing();
    if (!r) return forward_with(x, bank().pending());
    // Rows with their own adapters (lora/routing.hpp). One adapter for all rows, or rows
    // grouped by adapter: each group through the ordinary (fused) path with its adapter, the
    // same computation as the group alone. Rows in any other order: the gathered computation.
    const auto rows = routed_rows(*r, x);
    if (rows.uniform()) return forward_with(x, rows.uniform_adapters());
    const auto runs = detail::row_runs(rows.slot);
    if (runs.size() > rows.in_use.size() + 1)
      return add_routed(rows, torch::nn::functional::linear(x, weight, bias), x, is_training());
    std::vector<int64_t> lengths;
    for (const auto& run : runs) lengths.push_back(run.length);
    const auto xs = x.split_with_sizes(lengths, /*dim=*/0);
    std::vector<torch::Tensor> parts;
    for (size_t i = 0; i < runs.size(); ++i) {
      const auto slot = static_cast<size_t>(runs[i].slot);
      parts.push_back(forward_with(xs[i], slot < rows.in_use.size() ? std::vector<const LayerAdapter*>{rows.in_use[slot]}
                                                                     : std::vector<const LayerAdapter*>{}));
    }
    return torch::cat(parts, /*dim=*/0);  // (N, ..., out)
  }

 private:
  /// forward() with the adapters `pending` (in order) on top of the base layer.
  torch::Tensor forward_with(const torch::Tensor& x, const std::vector<const LayerAdapter*>& pending) {
    if (pending.empty()) return torch::nn::functional::linear(x, weight, bias);  // (..., out)
    if (const auto dt = pending.front()->A.scalar_type(); dt != x.scalar_type() && x.is_floating_point()) {
      // Float32 adapters on a half-precision base (Config::autocast_adapter_dtype): the base
      // product in the base dtype, each adapter in its own, cast at the branch's edges.
      detail::ForwardInput in{x.to(dt), weight, {}, is_training()};
      bool needs_base = false;
      for (const LayerAdapter* a : pending) needs_base |= a->variant().needs_base_output();
      if (!needs_base) {
        auto y = torch::nn::functional::linear(x, weight, bias).to(dt);
        for (const LayerAdapter* a : pending) y = a->variant().forward(*a, y, in);
        return y.to(x.scalar_type());
      }
      in.weight = weight.to(dt);  // DoRA's row norms and base share in the adapter's dtype
      in.base = torch::nn::functional::linear(in.x, in.weight);
      torch::Tensor y = in.base;
      for (const LayerAdapter* a : pending) y = a->variant().forward(*a, y, in);
      return (bias.defined() ? y + bias.to(dt) : y).to(x.scalar_type());
    }
    detail::ForwardInput in{x, weight, {}, is_training()};
    bool needs_base = false;
    for (const LayerAdapter* a : pending) needs_base |= a->variant().needs_base_output();
    if (!needs_base) {
      // The first adapter shares the base product's autograd node where its variant can
      // (plain LoRA: functional::lora_linear); any further ones are applied on top.
      auto y = pending.front()->variant().forward_first(*pending.front(), in, bias);
      for (size_t i = 1; i < pending.size(); ++i) y = pending[i]->variant().forward(*pending[i], y, in);
      return y;
    }
    // An adapter rescales the base output (DoRA): x W^T is computed once, without the bias,
    // each adapter is applied in order, then the bias is added.
    in.base = torch::nn::functional::linear(x, weight);
    torch::Tensor y = in.base;
    for (const LayerAdapter* a : pending) y = a->variant().forward(*a, y, in);
    return bias.defined() ? y + bias : y;
  }

 public:
  // Adapters: add_adapter(name, spec), remove_adapter, merge, unmerge, set_adapters_enabled,
  // set_active_adapters, adapter(name), adapter_names(), active_adapters(),
  // has_pending_adapters(), merged_weight(): detail::AdapterHost.

  std::shared_ptr<const detail::Kind> kind() const override {
    static const auto k = std::make_shared<const kinds::Linear>();
    return k;
  }

  void pretty_print(std::ostream& stream) const override {
    stream << "lora::Linear(in_features=" << options.in_features() << ", out_features=" << options.out_features()
           << ", bias=" << options.bias();
    for (const auto& kv : bank().adapters()) {
      const std::string variant = kv.second.variant().name();
      stream << ", " << kv.first << "=(r=" << kv.second.rank << ", scale=" << kv.second.scale
             << (variant.empty() ? "" : ", " + variant) << (kv.second.merged() ? ", merged" : "") << ")";
    }
    stream << ")";
  }

  torch::nn::LinearOptions options;
  torch::Tensor weight;  ///< (out, in)
  torch::Tensor bias;    ///< (out) or undefined

 protected:
  torch::nn::Module& adapter_owner() override { return *this; }
  torch::Tensor base_weight() const override { return weight; }
  std::string host_name() const override { return "lora::Linear"; }
};

TORCH_MODULE(Linear);

}  // namespace lora

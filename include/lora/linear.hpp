// lora::Linear: a drop-in for torch::nn::Linear (same options, parameters "weight" (out, in)
// and "bias" (out), so base checkpoints load unchanged) that can carry LoRA adapters:
//   y = x W^T + b + sum over active adapters of s * (dropout(x) A^T) B^T
// With no adapter (or adapters disabled) it computes exactly what torch::nn::Linear does.
// A DoRA adapter (AdapterSpec::use_dora) instead contributes (m/n - 1) x W^T + (m/n) s (dropout(x) A^T) B^T,
// n = ||W + s B A||_row detached, so that alone it gives y = (m/n) (x W^T + s (dropout(x) A^T) B^T) + b
// (see functional::add_dora).
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

#include "adapter.hpp"

namespace lora {

class LinearImpl : public torch::nn::Module {
 public:
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit LinearImpl(const torch::nn::LinearOptions& options_) : options(options_) { reset(); }

  /// Creates weight and bias exactly as torch::nn::Linear does (and drops any adapter).
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
    const auto pending = adapters.pending();
    for (const Adapter* a : pending)
      if (a->dora()) return forward_dora(x, pending);
    if (pending.empty()) return torch::nn::functional::linear(x, weight, bias);  // (..., out)
    // The first adapter shares the base product's autograd node (functional::lora_linear);
    // any further ones are added on top.
    const Adapter& first = *pending.front();
    auto y = functional::lora_linear(x, weight, bias, first.A, first.B, first.scale, first.dropout, is_training());
    for (size_t i = 1; i < pending.size(); ++i)
      y = functional::add_lora(y, x, pending[i]->A, pending[i]->B, pending[i]->scale, pending[i]->dropout,
                               is_training());
    return y;
  }

  /// Adds adapter `name` (see AdapterBank::add). `path` names the layer in error messages.
  Adapter& add_adapter(const std::string& name, const AdapterSpec& spec, const std::string& path = "") {
    return adapters.add(*this, path.empty() ? "lora::Linear" : path, name, spec, weight);
  }
  void remove_adapter(const std::string& name) { adapters.remove(*this, name, weight); }
  /// Merges adapter `name` (or every active one) into `weight`; forward() then skips it.
  void merge(const std::string& name = "") { adapters.merge(weight, name); }
  /// Takes adapter `name` (or every merged one) back out of `weight`.
  void unmerge(const std::string& name = "") { adapters.unmerge(weight, name); }
  void set_adapters_enabled(bool on) { adapters.set_enabled(on, weight); }

  void pretty_print(std::ostream& stream) const override {
    stream << "lora::Linear(in_features=" << options.in_features() << ", out_features=" << options.out_features()
           << ", bias=" << options.bias();
    for (const auto& kv : adapters.adapters())
      stream << ", " << kv.first << "=(r=" << kv.second.rank << ", scale=" << kv.second.scale
             << (kv.second.dora() ? ", dora" : "") << (kv.second.merged ? ", merged" : "") << ")";
    stream << ")";
  }

  torch::nn::LinearOptions options;
  torch::Tensor weight;  ///< (out, in)
  torch::Tensor bias;    ///< (out) or undefined
  AdapterBank adapters;

 private:
  /// forward() when a DoRA adapter is pending: base = x W^T is computed once (no bias), each
  /// DoRA adapter turns it into (m/n) (base + s lora), each LoRA adapter adds s lora, then the
  /// bias is added. With one DoRA adapter: y = (m/n) (x W^T + s (dropout(x) A^T) B^T) + b.
  torch::Tensor forward_dora(const torch::Tensor& x, const std::vector<const Adapter*>& pending) {
    const auto base = torch::nn::functional::linear(x, weight);  // (..., out), no bias
    torch::Tensor y = base;
    bool y_is_base = true;
    for (const Adapter* a : pending) {
      if (!a->dora()) {
        y = functional::add_lora(y, x, a->A, a->B, a->scale, a->dropout, is_training());
      } else {
        auto t = functional::add_dora(base, x, weight, a->A, a->B, a->magnitude, a->scale, a->dropout, is_training());
        y = y_is_base ? t : y + (t - base);
      }
      y_is_base = false;
    }
    return bias.defined() ? y + bias : y;
  }
};

TORCH_MODULE(Linear);

}  // namespace lora

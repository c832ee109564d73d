// lora::Linear: a drop-in for torch::nn::Linear (same options, parameters "weight" (out, in)
// and "bias" (out), so base checkpoints load unchanged) that can carry LoRA adapters:
//   y = x W^T + b + sum over active adapters of s * (dropout(x) A^T) B^T
// With no adapter (or adapters disabled) it computes exactly what torch::nn::Linear does.
// Adapters are added, chosen, merged and removed through its member functions (inject() calls
// them for you); adapter(name) reads one. Each adapter applies itself as its variant says
// (detail/variant.hpp): a plain LoRA one adds the term above, a DoRA one (AdapterSpec::use_dora)
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

#include "adapter.hpp"
#include "detail/adapter_bank.hpp"
#include "detail/variant.hpp"

namespace lora {

class LinearImpl : public torch::nn::Module {
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
    const auto pending = bank_.pending();
    if (pending.empty()) return torch::nn::functional::linear(x, weight, bias);  // (..., out)
    detail::ForwardInput in{x, weight, {}, is_training()};
    bool needs_base = false;
    for (const Adapter* a : pending) needs_base |= a->variant->needs_base_output();
    if (!needs_base) {
      // The first adapter shares the base product's autograd node where its variant can
      // (plain LoRA: functional::lora_linear); any further ones are applied on top.
      auto y = pending.front()->variant->forward_first(*pending.front(), in, bias);
      for (size_t i = 1; i < pending.size(); ++i) y = pending[i]->variant->forward(*pending[i], y, in);
      return y;
    }
    // An adapter rescales the base output (DoRA): x W^T is computed once, without the bias,
    // each adapter is applied in order, then the bias is added.
    in.base = torch::nn::functional::linear(x, weight);
    torch::Tensor y = in.base;
    for (const Adapter* a : pending) y = a->variant->forward(*a, y, in);
    return bias.defined() ? y + bias : y;
  }

  /// Adds adapter `name`, created as `spec` says (rank, scale, init, variant, ...). `path` names
  /// the layer in error messages. Throws ConfigError for a spec that does not fit the layer.
  const Adapter& add_adapter(const std::string& name, const AdapterSpec& spec, const std::string& path = "") {
    const auto& where = path.empty() ? std::string("lora::Linear") : path;
    detail::check_adapter_spec(spec, where, options.in_features(), options.out_features(), /*torch_linear=*/false);
    return bank_.add(*this, where, name, spec, weight);
  }
  void remove_adapter(const std::string& name) { bank_.remove(*this, name, weight); }
  /// Merges adapter `name` (or every active one) into `weight`; forward() then skips it.
  void merge(const std::string& name = "") { bank_.merge(weight, name); }
  /// Takes adapter `name` (or every merged one) back out of `weight`.
  void unmerge(const std::string& name = "") { bank_.unmerge(weight, name); }
  /// false: forward() is exactly the base layer (merged adapters are unmerged first).
  void set_adapters_enabled(bool on) { bank_.set_enabled(on, weight); }

  bool has_adapter(const std::string& name) const { return bank_.has(name); }
  /// Adapter `name`; throws ConfigError, listing the names there are, if there is none.
  const Adapter& adapter(const std::string& name) const { return bank_.get(name); }
  /// Every adapter's name, sorted.
  std::vector<std::string> adapter_names() const { return bank_.names(); }
  /// The adapters forward() uses, in order (new adapters are active).
  const std::vector<std::string>& active_adapters() const { return bank_.active(); }
  void set_active_adapters(const std::vector<std::string>& names) { bank_.set_active(names); }
  /// Whether forward() adds any adapter on top of `weight` (active, unmerged, enabled).
  bool has_pending_adapters() const { return !bank_.pending().empty(); }
  /// The weight forward() effectively uses: `weight` with every pending adapter merged in as
  /// merge() would, computed on a copy (nothing changes). For exports.
  torch::Tensor merged_weight() const { return bank_.merged_weight(weight); }

  void pretty_print(std::ostream& stream) const override {
    stream << "lora::Linear(in_features=" << options.in_features() << ", out_features=" << options.out_features()
           << ", bias=" << options.bias();
    for (const auto& kv : bank_.adapters()) {
      const std::string variant = kv.second.variant->name();
      stream << ", " << kv.first << "=(r=" << kv.second.rank << ", scale=" << kv.second.scale
             << (variant.empty() ? "" : ", " + variant) << (kv.second.merged ? ", merged" : "") << ")";
    }
    stream << ")";
  }

  torch::nn::LinearOptions options;
  torch::Tensor weight;  ///< (out, in)
  torch::Tensor bias;    ///< (out) or undefined

 private:
  detail::AdapterBank bank_;
};

TORCH_MODULE(Linear);

}  // namespace lora

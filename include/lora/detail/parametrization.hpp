// The compatibility path: LoRA on a plain torch::nn::Linear that the library has never seen
// (LayerKind::torch_linear). inject() uses it; users never name it.
//
// LibTorch's Linear::forward is not virtual and there are no forward hooks, so nothing can
// run inside a plain Linear's forward. Instead the layer's weight member (the tensor its
// forward reads) is replaced by the effective weight
//     W_eff = W0 + sum over active adapters of s * B A         (out, in)
// computed by an autograd function whose backward routes dL/dW_eff to A and B:
//     dL/dA = s * B^T (dL/dW_eff)     dL/dB = s * (dL/dW_eff) A^T
// W0 stays the registered "weight" parameter (frozen), so state dicts and model->to() see the
// base. W_eff must be recomputed whenever A or B change: Adapters::step(optimizer) does it after
// each step, Adapters::sync() on demand, and model->to(...) does it by itself. A backward pass
// through a stale W_eff throws lora::StaleWeightError instead of computing wrong gradients.
#pragma once

#include <torch/autograd.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <string>
#include <vector>

#include "../adapter.hpp"
#include "adapter_bank.hpp"
#include "variant.hpp"

namespace lora::detail {

/// W_eff = W + s * B A with gradients to A and B only. Saves no tensors through
/// save_for_backward, so several backward passes (gradient accumulation) can share one W_eff.
/// Keeps a copy of A and B as they were (r (in + out) values, small next to W): backward
/// compares them with the current ones, which catches every change, also those made through
/// `.data()` that leave the version counter alone (LibTorch's SGD updates that way).
struct LoraWeightFunction : public torch::autograd::Function<LoraWeightFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& W, const torch::Tensor& A,
                               const torch::Tensor& B, double scale, const std::string& layer) {
    ctx->saved_data["A"] = A;
    ctx->saved_data["B"] = B;
    ctx->saved_data["A0"] = A.detach().clone();
    ctx->saved_data["B0"] = B.detach().clone();
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["layer"] = layer;
    return torch::addmm(W, B, A, /*beta=*/1, /*alpha=*/scale);  // (out, in)
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto A = ctx->saved_data["A"].toTensor();
    auto B = ctx->saved_data["B"].toTensor();
    if (!torch::equal(A, ctx->saved_data["A0"].toTensor()) || !torch::equal(B, ctx->saved_data["B0"].toTensor()))
      throw StaleWeightError(str(
          "lora: layer '", ctx->saved_data["layer"].toStringRef(),
          "' (a plain torch::nn::Linear adapted through the compatibility path) ran forward with a stale "
          "effective weight: lora_A/lora_B changed (an optimizer step, a load or a manual edit) after it was "
          "computed. Use adapters.step(optimizer) instead of optimizer.step(), or call adapters.sync() after "
          "changing adapter weights; or declare the layer as lora::Linear, which needs no synchronisation."));
    const double s = ctx->saved_data["scale"].toDouble();
    const auto& G = grads[0];  // (out, in)
    return {ctx->needs_input_grad(0) ? G : torch::Tensor(),
            ctx->needs_input_grad(1) ? B.t().mm(G).mul_(s) : torch::Tensor(),   // (r, in)
            ctx->needs_input_grad(2) ? G.mm(A.t()).mul_(s) : torch::Tensor(),   // (out, r)
            torch::Tensor(), torch::Tensor()};
  }
};

/// The LoRA state of one plain torch::nn::Linear, registered on it as the child
/// "lora_parametrization" (no parameters of its own; A and B are registered on the Linear as
/// "lora_A.<name>.weight" and "lora_B.<name>.weight", as lora::Linear does).
class WeightParametrizationImpl : public torch::nn::Module {
 public:
  static constexpr const char* kChildName = "lora_parametrization";

  WeightParametrizationImpl(const std::shared_ptr<torch::nn::LinearImpl>& owner, std::string path)
      : owner_(owner), base_(owner->named_parameters(/*recurse=*/false)["weight"]), path_(std::move(path)) {}

  /// The parametrization of `linear`, created on first use.
  static std::shared_ptr<WeightParametrizationImpl> of(const std::shared_ptr<torch::nn::LinearImpl>& linear,
                                                       const std::string& path) {
    auto children = linear->named_children();
    if (auto* found = children.find(kChildName)) {
      auto p = std::dynamic_pointer_cast<WeightParametrizationImpl>(*found);
      if (p) return p;
    }
    auto p = std::make_shared<WeightParametrizationImpl>(linear, path);
    linear->register_module(kChildName, p);
    return p;
  }

  Adapter& add_adapter(const std::string& name, const AdapterSpec& spec) {
    check_adapter_spec(spec, path_, base_.size(1), base_.size(0), /*torch_linear=*/true);
    auto& a = bank_.add(owner(), path_, name, spec, base_);
    sync();
    return a;
  }
  void remove_adapter(const std::string& name) {
    bank_.remove(owner(), name, base_);
    sync();
  }
  void merge(const std::string& name = "") { bank_.merge(base_, name), sync(); }
  void unmerge(const std::string& name = "") { bank_.unmerge(base_, name), sync(); }
  void set_adapters_enabled(bool on) { bank_.set_enabled(on, base_), sync(); }

  // The same queries as lora::Linear's.
  bool has_adapter(const std::string& name) const { return bank_.has(name); }
  const Adapter& adapter(const std::string& name) const { return bank_.get(name); }
  std::vector<std::string> adapter_names() const { return bank_.names(); }
  const std::vector<std::string>& active_adapters() const { return bank_.active(); }
  void set_active_adapters(const std::vector<std::string>& names) { bank_.set_active(names), sync(); }
  bool has_pending_adapters() const { return !bank_.pending().empty(); }
  torch::Tensor merged_weight() const { return bank_.merged_weight(base_); }

  /// Recomputes the owner's effective weight from the current A and B (plain LoRA adapters:
  /// check_adapter_spec lets no other variant onto this path).
  void sync() {
    auto& lin = owner();
    auto pending = bank_.pending();
    if (pending.empty()) {
      lin.weight = base_;  // exactly the base: no op on the forward path
      return;
    }
    torch::AutoGradMode grad_on(true);
    torch::Tensor w = base_;
    for (const Adapter* a : pending) w = LoraWeightFunction::apply(w, a->A, a->B, a->scale, path_);
    lin.weight = w;
  }

  /// model->to(...) reaches this child before the owner's own weight: move the base first,
  /// let the Linear move the rest, then recompute the effective weight on the new device.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override {
    base_.set_data(base_.to(device, dtype, non_blocking));
    adapters_to([&](torch::Tensor& t) { t.set_data(t.to(device, dtype, non_blocking)); });
    sync();
  }
  void to(torch::Dtype dtype, bool non_blocking = false) override {
    base_.set_data(base_.to(dtype, non_blocking));
    adapters_to([&](torch::Tensor& t) { t.set_data(t.to(dtype, non_blocking)); });
    sync();
  }
  void to(torch::Device device, bool non_blocking = false) override {
    base_.set_data(base_.to(device, non_blocking));
    adapters_to([&](torch::Tensor& t) { t.set_data(t.to(device, non_blocking)); });
    sync();
  }

  const std::string& path() const { return path_; }
  torch::Tensor base_weight() const { return base_; }

 private:
  torch::nn::LinearImpl& owner() {
    auto p = owner_.lock();
    if (!p)
      throw Error(str("lora: the torch::nn::Linear '", path_, "' that this adapter belongs to no longer exists."));
    return *p;
  }
  template <typename F>
  void adapters_to(F&& move) {
    for (const auto& kv : bank_.adapters())
      for (const auto& t : kv.second.variant->tensors()) {
        auto tensor = kv.second.*t.member;  // same TensorImpl as the registered parameter
        move(tensor);
      }
  }

  AdapterBank bank_;
  std::weak_ptr<torch::nn::LinearImpl> owner_;
  torch::Tensor base_;  ///< W0: the Linear's registered "weight" parameter
  std::string path_;
};

}  // namespace lora::detail

// LoRA variants: what an adapter does beyond plain LoRA, behind one interface (as PEFT's
// LoraVariant). Every adapter has A and B (their shapes and names are its layer kind's:
// detail/kind.hpp); its variant says which tensors it adds and how it creates them, how
// forward() applies the adapter, and how the adapter merges into the base weight and comes back
// out. The code that creates, runs, merges and saves
// adapters (LayerAdapterSet, lora::Linear, lora::ModelAdapter, lora::peft) asks the adapter's variant
// instead of knowing any. Plain LoRA is PlainLora below; DoRA is detail/dora.hpp;
// detail/variant_registry.hpp lists the variants and picks one from the options.
#pragma once

#include <torch/nn/functional/linear.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "../layer_adapter.hpp"
#include "../functional.hpp"
#include "../init.hpp"
#include "kind.hpp"

namespace lora::detail {

/// One tensor of an adapter, with its names.
struct AdapterTensor {
  /// Registered on the layer as "<holder>.<adapter name>.weight" (PEFT's in-memory name).
  const char* holder;
  /// Named "<layer path>.<key>" in ModelAdapter::state_dict() and "base_model.model.<HF path>.<key>"
  /// in PEFT files.
  const char* key;
  /// Where the LayerAdapter holds it.
  torch::Tensor LayerAdapter::*member;
  /// A variant's own tensor: its shape for rank r on a layer whose matrix view is (out, in)
  /// (A's and B's shapes are their kind's: Kind::a_shape, b_shape).
  std::vector<int64_t> (*shape)(int64_t out, int64_t in, int64_t rank) = nullptr;
};

/// What a drop-in layer's forward() hands each adapter's variant.
struct ForwardInput {
  torch::Tensor x;       ///< the layer's input (Linear: (..., in))
  torch::Tensor weight;  ///< the base weight W (Linear: (out, in))
  torch::Tensor base;    ///< x W^T (..., out), no bias; defined only if an adapter needs_base_output()
  bool training = false;
};

/// What one kind of adapter does. The instances are stateless (detail/variant_registry.hpp holds one of
/// each); an adapter's own state lives in its LayerAdapter, its merge state in what merge() returns.
class Variant {
 public:
  virtual ~Variant() = default;

  /// The name in summaries ("dora"); empty for plain LoRA.
  virtual const char* name() const = 0;
  /// The option that selects it, in Config, LayerAdapterSpec and PEFT's adapter_config.json
  /// ("use_dora"); empty for plain LoRA.
  virtual const char* option() const = 0;
  /// The tensors it adds to each adapter besides A and B.
  virtual std::vector<AdapterTensor> extra_tensors() const { return {}; }
  /// Every tensor of its adapters on a layer of kind `kind`: A, B (named as the kind names
  /// them), then extra_tensors().
  std::vector<AdapterTensor> tensors(const Kind& kind) const {
    const auto n = kind.names();
    std::vector<AdapterTensor> out = {{n.a_holder, n.a_key, &LayerAdapter::A}, {n.b_holder, n.b_key, &LayerAdapter::B}};
    for (const auto& t : extra_tensors()) out.push_back(t);
    return out;
  }

  /// Creates the extra tensors of `a` once its init policy has run: `ctx` holds A, B and the
  /// base weight as the policy left them (CPU float32); `options` are the layer weight's
  /// device and dtype. `a`'s rank, scale and dropout are set.
  virtual void init(LayerAdapter& /*a*/, const InitContext& /*ctx*/, const torch::TensorOptions& /*options*/) const {}

  /// Whether forward() needs the base output alone (ForwardInput::base): a variant that
  /// rescales it does; one that only adds a term to the output does not.
  virtual bool needs_base_output() const { return false; }
  /// The layer's output with adapter `a` applied to `y`, the output so far (..., out).
  virtual torch::Tensor forward(const LayerAdapter& a, const torch::Tensor& y, const ForwardInput& in) const = 0;
  /// x W^T + b with `a` applied, for the first adapter when none needs the base output: by
  /// default the base product then forward(); plain LoRA fuses both into one autograd node.
  virtual torch::Tensor forward_first(const LayerAdapter& a, const ForwardInput& in, const torch::Tensor& bias) const {
    return forward(a, torch::nn::functional::linear(in.x, in.weight, bias), in);
  }

  /// Whether merge() only adds to the weight: such merges commute, so one can come out while
  /// those merged after it stay in.
  virtual bool merge_adds() const { return true; }
  /// Merges `a` into `weight` in place, without autograd. Returns what unmerge() needs to
  /// invert exactly this merge (undefined if nothing).
  virtual torch::Tensor merge(const LayerAdapter& a, const torch::Tensor& weight) const = 0;
  /// Takes `a` back out of `weight` in place; `record` is what its merge() returned.
  virtual void unmerge(const LayerAdapter& a, const torch::Tensor& weight, const torch::Tensor& record) const = 0;
};

/// Plain LoRA: adds its kind's branch to the output (Linear: s (dropout(x) A^T) B^T); merges as
/// M <- M + s B A on its kind's matrix view M of the weight (Linear: W <- W + s B A).
class PlainLora final : public Variant {
 public:
  const char* name() const override { return ""; }
  const char* option() const override { return ""; }

  torch::Tensor forward(const LayerAdapter& a, const torch::Tensor& y, const ForwardInput& in) const override {
    return a.kind().add_branch(a, y, in.x, in.training);
  }
  /// Linear layers only (lora::Linear calls it): base and branch in one autograd node.
  torch::Tensor forward_first(const LayerAdapter& a, const ForwardInput& in, const torch::Tensor& bias) const override {
    return functional::lora_linear(in.x, in.weight, bias, a.A, a.B, a.scale, a.dropout, in.training);
  }

  /// In the adapter's dtype (float32 on a half-precision base), rounded to the weight's once.
  torch::Tensor merge(const LayerAdapter& a, const torch::Tensor& weight) const override {
    torch::NoGradGuard no_grad;
    auto m = a.kind().view().of(weight);
    const auto delta = torch::mm(b_matrix(a), a_matrix(a)).mul_(a.scale);
    if (delta.scalar_type() == m.scalar_type()) m.add_(delta);
    else m.copy_(m.to(delta.scalar_type()).add_(delta));
    return {};
  }
  void unmerge(const LayerAdapter& a, const torch::Tensor& weight, const torch::Tensor& /*record*/) const override {
    torch::NoGradGuard no_grad;
    auto m = a.kind().view().of(weight);
    const auto delta = torch::mm(b_matrix(a), a_matrix(a)).mul_(a.scale);
    if (delta.scalar_type() == m.scalar_type()) m.sub_(delta);
    else m.copy_(m.to(delta.scalar_type()).sub_(delta));
  }
};

}  // namespace lora::detail

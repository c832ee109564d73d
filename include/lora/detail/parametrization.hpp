// The compatibility path: LoRA on a plain torch::nn layer that the library has never seen
// (torch::nn::Linear, Embedding, Conv1d/2d/3d, and the in_proj_weight of a MultiheadAttention).
// inject() uses it; users never name it.
//
// LibTorch's forward() functions are not virtual and there are no forward hooks, so nothing
// can run inside a plain layer's forward. But each of them reads its weight from a public
// member (`weight`, `in_proj_weight`); that member is replaced by the effective weight
//     W_eff = W0 + sum over active adapters of the kind's delta, s * B A on its matrix view
// computed by an autograd function whose backward routes dL/dW_eff to A and B:
//     dL/dA = s * B^T (dL/dM)     dL/dB = s * (dL/dM) A^T      (M: the kind's view of W)
// W0 stays the registered parameter (frozen), so state dicts and model->to() see the base.
// W_eff must be recomputed whenever A or B change: ModelAdapter::step(optimizer) does it after each
// step, ModelAdapter::sync() on demand, and model->to(...) does it by itself. A backward pass
// through a stale W_eff throws lora::StaleWeightError instead of computing wrong gradients.
//
// One WeightParametrizationImpl per adapted tensor, registered on the layer as the child
// "lora_parametrization". Its Parts are what carries adapters: the whole weight, or, for an
// attention's in_proj_weight, any of its q / k / v row slices too (kinds/attention.hpp); each
// Part is an AdapterHost with its own bank.
#pragma once

#include <torch/autograd.h>
#include <torch/nn/module.h>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../layer_adapter.hpp"
#include "adapter_host.hpp"
#include "kind.hpp"
#include "variant.hpp"

namespace lora::detail {

/// W_eff = W + s * B A on the matrix view (transpose, row_offset, rows) of W, with gradients to
/// A and B only. Saves no tensors through save_for_backward, so several backward passes
/// (gradient accumulation) can share one W_eff. Keeps a copy of A and B as they were (r (in +
/// out) values, small next to W): backward compares them with the current ones, which catches
/// every change, also those made through `.data()` that leave the version counter alone
/// (LibTorch's SGD updates that way).
struct LoraWeightFunction : public torch::autograd::Function<LoraWeightFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& W, const torch::Tensor& A,
                               const torch::Tensor& B, double scale, bool transpose, int64_t row_offset,
                               int64_t rows, const std::string& layer) {
    ctx->saved_data["A"] = A;
    ctx->saved_data["B"] = B;
    ctx->saved_data["A0"] = A.detach().clone();
    ctx->saved_data["B0"] = B.detach().clone();
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["transpose"] = transpose;
    ctx->saved_data["row_offset"] = row_offset;
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["layer"] = layer;
    const auto Am = A.reshape({A.size(0), -1}), Bm = B.reshape({B.size(0), -1});  // (r, in_m), (out_m, r)
    // Float32 adapters on a half-precision base: W + s B A in float32, rounded once.
    const auto Wa = W.scalar_type() == A.scalar_type() ? W : W.to(A.scalar_type());
    if (!transpose && rows < 0 && W.dim() == 2)
      return torch::addmm(Wa, Bm, Am, /*beta=*/1, /*alpha=*/scale).to(W.scalar_type());  // (out, in)
    auto out = Wa.clone(at::MemoryFormat::Contiguous);
    MatrixView{transpose, row_offset, rows}.of(out).addmm_(Bm, Am, /*beta=*/1, /*alpha=*/scale);
    return out.to(W.scalar_type());  // W's shape
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto A = ctx->saved_data["A"].toTensor();
    auto B = ctx->saved_data["B"].toTensor();
    if (!torch::equal(A, ctx->saved_data["A0"].toTensor()) || !torch::equal(B, ctx->saved_data["B0"].toTensor()))
      throw StaleWeightError(str(
          "lora: layer '", ctx->saved_data["layer"].toStringRef(),
          "' (a plain torch::nn layer adapted through the compatibility path) ran forward with a stale "
          "effective weight: its LoRA A/B changed (an optimizer step, a load or a manual edit) after it was "
          "computed. Use adapters.step(optimizer) instead of optimizer.step(), or call adapters.sync() after "
          "changing adapter weights; or declare the layer as the library's drop-in (lora::Linear, ...), which "
          "needs no synchronisation."));
    const double s = ctx->saved_data["scale"].toDouble();
    const MatrixView view{ctx->saved_data["transpose"].toBool(), ctx->saved_data["row_offset"].toInt(),
                          ctx->saved_data["rows"].toInt()};
    const auto& G = grads[0];                    // W's shape
    const auto Gm = view.of(G.contiguous()).to(A.scalar_type());  // (out_m, in_m)
    const auto Am = A.reshape({A.size(0), -1}), Bm = B.reshape({B.size(0), -1});
    return {ctx->needs_input_grad(0) ? G : torch::Tensor(),
            ctx->needs_input_grad(1) ? Bm.t().mm(Gm).mul_(s).reshape(A.sizes()) : torch::Tensor(),  // A's shape
            ctx->needs_input_grad(2) ? Gm.mm(Am.t()).mul_(s).reshape(B.sizes()) : torch::Tensor(),  // B's shape
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

class WeightParametrizationImpl;

/// One adapted part of a re-parametrized weight (the whole weight, or an attention's q / k / v
/// slice): the adapters on it, as an AdapterHost.
class WeightPart final : public AdapterHost {
 public:
  WeightPart(WeightParametrizationImpl& owner, std::shared_ptr<const Kind> kind, std::string path,
             std::shared_ptr<torch::nn::Module> holder)
      : owner_(owner), kind_(std::move(kind)), path_(std::move(path)), holder_(std::move(holder)) {}

  std::shared_ptr<const Kind> kind() const override { return kind_; }
  bool reparametrized() const override { return true; }
  void sync() override;
  const std::string& path() const { return path_; }
  /// The adapters to add to the weight now (active, unmerged, enabled).
  std::vector<const LayerAdapter*> pending() const { return bank().pending(); }
  /// Every adapter on this part, by name.
  const std::map<std::string, LayerAdapter>& adapters() const { return bank().adapters(); }

 protected:
  torch::nn::Module& adapter_owner() override;
  torch::Tensor base_weight() const override;
  std::string host_name() const override { return path_; }

 private:
  WeightParametrizationImpl& owner_;
  std::shared_ptr<const Kind> kind_;
  std::string path_;
  std::shared_ptr<torch::nn::Module> holder_;  ///< where a slice's tensors are registered; null: on the layer
};

/// The LoRA state of one weight tensor of a plain torch::nn layer (see the top).
class WeightParametrizationImpl : public torch::nn::Module {
 public:
  static constexpr const char* kChildName = "lora_parametrization";
  /// The member the layer's forward() reads the weight from.
  using Slot = std::function<torch::Tensor&(torch::nn::Module&)>;

  WeightParametrizationImpl(const std::shared_ptr<torch::nn::Module>& layer, Slot slot, const std::string& param)
      : layer_(layer), slot_(std::move(slot)), base_(layer->named_parameters(/*recurse=*/false)[param]) {}

  /// The parametrization of `param` (read by `slot`) on `layer`, created on first use.
  static std::shared_ptr<WeightParametrizationImpl> of(const std::shared_ptr<torch::nn::Module>& layer,
                                                       const Slot& slot, const std::string& param) {
    if (auto p = find(*layer)) return p;
    auto p = std::make_shared<WeightParametrizationImpl>(layer, slot, param);
    layer->register_module(kChildName, p);
    return p;
  }
  /// The parametrization registered on `layer`, or null.
  static std::shared_ptr<WeightParametrizationImpl> find(const torch::nn::Module& layer) {
    const auto children = layer.named_children();  // keep the dict alive: find() points into it
    if (const auto* c = children.find(kChildName)) return std::dynamic_pointer_cast<WeightParametrizationImpl>(*c);
    return nullptr;
  }

  /// The part called `name` ("" for the whole weight), created on first use with `kind`.
  WeightPart& part(const std::string& name, const std::shared_ptr<const Kind>& kind, const std::string& path) {
    for (auto& p : parts_)
      if (p.first == name) return *p.second;
    std::shared_ptr<torch::nn::Module> holder;
    if (!name.empty()) holder = register_module(name, std::make_shared<torch::nn::Module>());
    parts_.emplace_back(name, std::make_unique<WeightPart>(*this, kind, path, holder));
    return *parts_.back().second;
  }
  /// The part called `name`, or null.
  WeightPart* find_part(const std::string& name) {
    for (auto& p : parts_)
      if (p.first == name) return p.second.get();
    return nullptr;
  }

  /// Recomputes the layer's effective weight from the current A and B of every part (plain
  /// LoRA adapters: check_adapter_spec lets no other variant onto this path).
  void sync() {
    auto& w = slot_(layer());
    torch::AutoGradMode grad_on(true);
    torch::Tensor eff = base_;
    for (const auto& [name, part] : parts_)
      for (const LayerAdapter* a : part->pending()) {
        const auto v = a->kind().view();
        eff = LoraWeightFunction::apply(eff, a->A, a->B, a->scale, v.transpose, v.row_offset, v.rows, part->path());
      }
    w = eff.is_same(base_) ? base_ : eff;  // exactly the base without adapters: no op on the forward path
  }

  /// model->to(...) reaches this child before the layer's own weight: move the base first,
  /// let the layer move the rest, then recompute the effective weight on the new device.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override {
    move([&](torch::Tensor& t) { t.set_data(t.to(device, dtype, non_blocking)); });
  }
  void to(torch::Dtype dtype, bool non_blocking = false) override {
    move([&](torch::Tensor& t) { t.set_data(t.to(dtype, non_blocking)); });
  }
  void to(torch::Device device, bool non_blocking = false) override {
    move([&](torch::Tensor& t) { t.set_data(t.to(device, non_blocking)); });
  }

  torch::Tensor base_weight() const { return base_; }
  /// The weight the layer's forward() effectively uses, computed afresh on a copy: the base
  /// with every part's pending adapters merged in (nothing changes). For exports.
  torch::Tensor merged_weight() const {
    torch::NoGradGuard no_grad;
    auto w = base_.detach().clone();
    for (const auto& [name, part] : parts_)
      for (const LayerAdapter* a : part->pending()) a->variant().merge(*a, w);
    return w;
  }
  bool has_pending_adapters() const {
    for (const auto& [name, part] : parts_)
      if (!part->pending().empty()) return true;
    return false;
  }
  torch::nn::Module& layer() {
    auto p = layer_.lock();
    if (!p) throw Error("lora: the torch::nn layer that this adapter belongs to no longer exists.");
    return *p;
  }

 private:
  template <typename F>
  void move(F&& f) {
    f(base_);
    for (const auto& [name, part] : parts_)
      for (const auto& [adapter, a] : part->adapters())
        for (const auto& t : a.variant().tensors(a.kind())) {
          auto tensor = a.*t.member;  // same TensorImpl as the registered parameter
          f(tensor);
        }
    sync();
  }

  std::weak_ptr<torch::nn::Module> layer_;
  Slot slot_;
  torch::Tensor base_;  ///< W0: the layer's registered parameter
  std::vector<std::pair<std::string, std::unique_ptr<WeightPart>>> parts_;  ///< in creation order
};

inline void WeightPart::sync() { owner_.sync(); }
inline torch::nn::Module& WeightPart::adapter_owner() { return holder_ ? *holder_ : owner_.layer(); }
inline torch::Tensor WeightPart::base_weight() const { return owner_.base_weight(); }

}  // namespace lora::detail

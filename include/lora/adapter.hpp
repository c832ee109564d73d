// One layer's adapters: the tensors A (r, in) and B (out, r) of each named adapter (and, for
// DoRA, the magnitude m (out)), how they are created, registered (as "lora_A.<name>.weight",
// "lora_B.<name>.weight" and "lora_magnitude_vector.<name>.weight" under the layer, PEFT's
// in-memory names), applied and merged. Shared by lora::Linear and the plain-Linear path.
#pragma once

#include <torch/autograd.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "detail/hash.hpp"
#include "error.hpp"
#include "init.hpp"

namespace lora {

/// What it takes to create one adapter on one layer (inject() fills it from Config).
struct AdapterSpec {
  int64_t rank = 8;
  double alpha = 8;
  double scale = 1;        ///< s, already resolved by the scaling policy
  double dropout = 0;      ///< dropout on the LoRA branch's input, in training mode only
  Init init = init::uniform_zero();
  uint64_t seed = 0;       ///< the generator seed for this adapter on this layer
  /// Allow rank > min(in, out) (then B A has rank min(in, out); PEFT allows it silently, and
  /// the seed study's r = 128 adapter on its 768 -> 4 classifier needs it).
  bool allow_rank_above_min = false;
  /// DoRA (Liu et al. 2024): also learn a magnitude per output row (lora::Linear layers only).
  bool use_dora = false;
};

/// One adapter on one layer.
struct Adapter {
  torch::Tensor A;  ///< (r, in)
  torch::Tensor B;  ///< (out, r)
  int64_t rank = 0;
  double alpha = 0;
  double scale = 1;
  double dropout = 0;
  bool merged = false;  ///< merged into the base weight (see AdapterBank::merge)
  /// DoRA's magnitude m (out), one value per output row; undefined for plain LoRA.
  torch::Tensor magnitude;
  /// DoRA only, while merged: the row factor m / ||W + s B A|| the merge applied, (out, 1), so
  /// that unmerge() inverts exactly that merge.
  torch::Tensor merged_factor;

  bool dora() const { return magnitude.defined(); }

  /// s * B A, (out, in): what this adapter adds to the base weight (before DoRA's row scaling).
  torch::Tensor delta_weight() const { return torch::mm(B, A).mul_(scale); }
};

namespace functional {

/// y + s * (dropout(x) A^T) B^T, fused into one addmm. `x` (..., in), `y` (..., out).
/// `dropout_mask`, if defined, replaces the random dropout mask (0/1 values, x's shape):
/// dropout(x) = x * mask / (1 - p). Without a mask and with p > 0 in training mode, a
/// Bernoulli mask is drawn.
inline torch::Tensor add_lora(const torch::Tensor& y, const torch::Tensor& x, const torch::Tensor& A,
                              const torch::Tensor& B, double scale, double p = 0.0, bool training = false,
                              const torch::Tensor& dropout_mask = {}) {
  torch::Tensor xd = x;
  if (dropout_mask.defined()) {
    xd = x * dropout_mask / (1.0 - p);
  } else if (training && p > 0) {
    xd = torch::dropout(x, p, /*train=*/true);
  }
  const auto out = B.size(0);
  const auto r = A.size(0);
  auto h = torch::matmul(xd, A.t()).reshape({-1, r});  // (N, r)
  auto y2 = torch::addmm(y.reshape({-1, out}), h, B.t(), /*beta=*/1, /*alpha=*/scale);  // (N, out)
  return y2.view(y.sizes());
}

namespace impl {

/// Whether x (W + s B A)^T beats x W^T + s (x A^T) B^T for N rows: building W + s B A costs
/// 2 out r in flops and one (out, in) write; the two thin products it replaces cost 2 N r
/// (in + out) flops and a read-modify-write pass over the (N, out) output.
inline bool merge_pays(int64_t N, int64_t in, int64_t out) { return N * (in + out) >= in * out; }

/// The forward of LoraLinearFunction, also used as is when no gradient is recorded. `xl` is
/// the LoRA branch's input (x, or dropout(x)). With xl = x and enough rows, one product with
/// the merged weight: y = x (W + s B A)^T + b; else y = x W^T + b (one addmm written straight
/// into y), then y += s (xl A^T) B^T in place. Sets `ht` = (xl A^T)^T = A xl^T, (r, N), when
/// `ht_out` is given.
///
/// The thin products are computed as (r, N) results (A x^T, not x A^T; B^T g^T, not g B):
/// the same numbers, and OpenBLAS runs that orientation about twice as fast here (each reads
/// a whole (N, in) or (N, out) activation to produce r rows; docs/performance.md).
inline torch::Tensor lora_linear_forward(const torch::Tensor& x, const torch::Tensor& xl, const torch::Tensor& W,
                                         const torch::Tensor& b, const torch::Tensor& A, const torch::Tensor& B,
                                         double scale, torch::Tensor* ht_out = nullptr) {
  const auto in = W.size(1), out = W.size(0);
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  auto y = torch::empty(sizes, x.options());
  auto y2 = y.view({-1, out});  // (N, out)
  const auto x2 = x.reshape({-1, in});
  const bool merged = xl.is_same(x) && merge_pays(x2.size(0), in, out);
  const auto Wy = merged ? torch::addmm(W, B, A, /*beta=*/1, /*alpha=*/scale) : W;  // (out, in)
  if (b.defined())
    torch::addmm_out(y2, b, x2, Wy.t());
  else
    torch::mm_out(y2, x2, Wy.t());
  if (merged && !ht_out) return y;
  auto ht = torch::mm(A, (xl.is_same(x) ? x2 : xl.reshape({-1, in})).t());  // (r, N)
  if (!merged) y2.addmm_(ht.t(), B.t(), /*beta=*/1, /*alpha=*/scale);
  if (ht_out) *ht_out = ht;
  return y;
}

/// y = x W^T + b + s (xl A^T) B^T as one autograd node, xl = x, or the dropped-out input `xd`
/// when one is given. Against base linear + add_lora it saves, per layer and step: the copy of
/// the base output that an out-of-place addmm makes; the second (N, in) input gradient that
/// the autograd engine would have to add to the first; three autograd nodes; and, when there
/// are more rows than in out / (in + out) (training batches, batched inference) and no
/// dropout, the two thin products that read and rewrite a whole (N, out) or (N, in) tensor:
/// forward and input gradient then use the merged weight W + s B A, rebuilt each time (2 out
/// r in flops), so the LoRA term costs almost nothing on top of the base product. It saves
/// for backward only what the gradients asked for need: x for dW (trainable base) or dA,
/// h^T = A xl^T (r, N) for dB, so a frozen base keeps nothing alive for a weight gradient it
/// never computes.
struct LoraLinearFunction : public torch::autograd::Function<LoraLinearFunction> {
  /// `xd` and `b` are optional (undefined tensors cannot be inputs of a C++ custom function).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const c10::optional<torch::Tensor>& xd_opt, const torch::Tensor& W,
                               const c10::optional<torch::Tensor>& b_opt, const torch::Tensor& A,
                               const torch::Tensor& B, double scale) {
    const torch::Tensor xd = xd_opt.value_or(torch::Tensor()), b = b_opt.value_or(torch::Tensor());
    const bool has_xd = xd.defined(), has_b = b.defined();
    const bool keep_x = W.requires_grad() || (A.requires_grad() && !has_xd);
    const bool keep_xd = has_xd && A.requires_grad();
    const bool keep_h = B.requires_grad();
    torch::Tensor ht;
    auto y = lora_linear_forward(x, has_xd ? xd : x, W, b, A, B, scale, keep_h ? &ht : nullptr);
    std::vector<torch::Tensor> saved = {W, A, B};
    if (keep_x) saved.push_back(x);
    if (keep_xd) saved.push_back(xd);
    if (keep_h) saved.push_back(ht);
    ctx->save_for_backward(saved);
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["flags"] = static_cast<int64_t>(keep_x | keep_xd << 1 | keep_h << 2 | has_xd << 3 | has_b << 4);
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto flags = ctx->saved_data["flags"].toInt();
    const bool keep_x = flags & 1, keep_xd = flags & 2, keep_h = flags & 4, has_xd = flags & 8, has_b = flags & 16;
    const double s = ctx->saved_data["scale"].toDouble();
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto &W = saved[0], &A = saved[1], &B = saved[2];
    size_t next = 3;
    const torch::Tensor x = keep_x ? saved[next++] : torch::Tensor();
    const torch::Tensor xd = keep_xd ? saved[next++] : torch::Tensor();
    const torch::Tensor ht = keep_h ? saved[next++] : torch::Tensor();  // (r, N)
    const auto in = W.size(1), out = W.size(0);
    const auto g = grads[0].reshape({-1, out});  // (N, out)
    const bool merged = !has_xd && merge_pays(g.size(0), in, out);

    // needs_input_grad counts the tensor inputs only: an absent xd or b takes no index.
    size_t edge = 0;
    auto needs = [&](bool present) { return present && ctx->needs_input_grad(edge++); };
    const bool need_x = needs(true), need_xd = needs(has_xd), need_W = needs(true), need_b = needs(has_b),
               need_A = needs(true), need_B = needs(true);
    torch::Tensor dx, dxd, dW, db, dA, dB, gBt;
    if (need_A || need_xd || (need_x && !has_xd && !merged))
      gBt = torch::mm(B.t(), g.t()).mul_(s);  // (s g B)^T, (r, N)
    if (need_x) {
      if (merged) {
        dx = torch::mm(g, torch::addmm(W, B, A, /*beta=*/1, /*alpha=*/s));  // g (W + s B A), (N, in)
      } else {
        dx = torch::mm(g, W);                  // (N, in)
        if (!has_xd) dx.addmm_(gBt.t(), A);    // + s (g B) A, in place
      }
      dx = dx.view(x_sizes);
    }
    if (need_xd) dxd = torch::mm(gBt.t(), A).view(x_sizes);
    if (need_W) dW = torch::mm(g.t(), x.reshape({-1, in}));  // (out, in)
    if (need_b) db = g.sum(0);
    if (need_A) dA = torch::mm(gBt, (has_xd ? xd : x).reshape({-1, in}));  // (r, in)
    if (need_B) dB = torch::mm(ht, g).mul_(s).t().contiguous();            // (s h^T g)^T, (out, r)
    return {dx, dxd, dW, db, dA, dB, torch::Tensor()};
  }
};

}  // namespace impl

/// x W^T + b + s * (dropout(x) A^T) B^T in one autograd node (impl::LoraLinearFunction):
/// what lora::Linear computes with one adapter, cheaper in time and memory than
/// linear(x, W, b) followed by add_lora() and equal to it (and to lora_linear_reference) within
/// float rounding, forward and backward. `p`, `training` and `dropout_mask` as for add_lora.
inline torch::Tensor lora_linear(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                 const torch::Tensor& A, const torch::Tensor& B, double scale, double p = 0.0,
                                 bool training = false, const torch::Tensor& dropout_mask = {}) {
  torch::Tensor xd;
  if (dropout_mask.defined()) {
    xd = x * dropout_mask / (1.0 - p);
  } else if (training && p > 0) {
    xd = torch::dropout(x, p, /*train=*/true);
  }
  if (!torch::GradMode::is_enabled()) return impl::lora_linear_forward(x, xd.defined() ? xd : x, W, b, A, B, scale);
  using opt = c10::optional<torch::Tensor>;
  return impl::LoraLinearFunction::apply(x, xd.defined() ? opt(xd) : opt(), W, b.defined() ? opt(b) : opt(), A, B,
                                         scale);
}

/// The unfused reference: x W^T + b + s * (dropout(x) A^T) B^T, for tests and documentation.
inline torch::Tensor lora_linear_reference(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                           const torch::Tensor& A, const torch::Tensor& B, double scale,
                                           const torch::Tensor& dropout_input = {}) {
  auto base = torch::matmul(x, W.t());
  if (b.defined()) base = base + b;
  const auto& xd = dropout_input.defined() ? dropout_input : x;
  return base + scale * torch::matmul(torch::matmul(xd, A.t()), B.t());
}

/// DoRA's row norms ||W + s B A||_row, (out), computed without autograd: DoRA treats the norm
/// as a constant (section 4.3 of the paper; PEFT detaches it too).
inline torch::Tensor dora_weight_norm(const torch::Tensor& W, const torch::Tensor& A, const torch::Tensor& B,
                                      double scale) {
  torch::NoGradGuard no_grad;
  return torch::addmm(W.detach(), B.detach().to(W.dtype()), A.detach().to(W.dtype()), /*beta=*/1, /*alpha=*/scale)
      .norm(2, {1});
}

/// One DoRA adapter on top of `base` = x W^T (no bias), `x` (..., in), `base` (..., out):
///   (m / n) * (base + s * (dropout(x) A^T) B^T),   n = ||W + s B A||_row, detached.
/// With the bias added outside, this is DoRA's y = (m / n) (W + s B A) x + b when dropout is
/// off. PEFT writes the same sum as base + (m/n - 1) base + (m/n) s lora and, with dropout on
/// in training, evaluates its second term on dropout(x): one more full (..., in) x (in, out)
/// matmul. Here the base product is computed once, on the un-dropped x, and dropout only
/// touches the LoRA branch: identical in eval mode and for p = 0, the same in expectation
/// (dropout(x) has mean x) otherwise, and as cheap as LoRA plus one (out)-vector scale.
inline torch::Tensor add_dora(const torch::Tensor& base, const torch::Tensor& x, const torch::Tensor& W,
                              const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& magnitude,
                              double scale, double p = 0.0, bool training = false,
                              const torch::Tensor& dropout_mask = {}) {
  const auto factor = magnitude / dora_weight_norm(W, A, B, scale);  // (out); gradient to m only
  return add_lora(base, x, A, B, scale, p, training, dropout_mask) * factor;
}

/// The unfused DoRA reference: (m / ||W + s B A||_row) * (x W^T + s (dropout(x) A^T) B^T) + b,
/// the norm detached, for tests and documentation.
inline torch::Tensor dora_linear_reference(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                           const torch::Tensor& A, const torch::Tensor& B,
                                           const torch::Tensor& magnitude, double scale,
                                           const torch::Tensor& dropout_input = {}) {
  const auto& xd = dropout_input.defined() ? dropout_input : x;
  auto n = (W + scale * torch::mm(B, A)).norm(2, {1}).detach();
  auto y = (magnitude / n) * (torch::matmul(x, W.t()) + scale * torch::matmul(torch::matmul(xd, A.t()), B.t()));
  return b.defined() ? y + b : y;
}

}  // namespace functional

/// The adapters of one layer, registered on that layer (the owner) as submodules
/// "lora_A" and "lora_B", each with one child per adapter name holding "weight".
class AdapterBank {
 public:
  /// Creates adapter `name` on `owner`, whose base weight is `weight` (out, in). Policies
  /// that change the base (PiSSA, OLoRA) rewrite `weight` in place.
  Adapter& add(torch::nn::Module& owner, const std::string& layer_path, const std::string& name,
               const AdapterSpec& spec, torch::Tensor weight) {
    check_name(layer_path, name);
    const auto out = weight.size(0), in = weight.size(1);
    if (spec.rank <= 0 || (spec.rank > std::min(in, out) && (!spec.allow_rank_above_min || spec.init.changes_base)))
      throw ConfigError(detail::str("lora: rank ", spec.rank, " is invalid for layer '", layer_path, "' of shape (out ",
                                    out, ", in ", in, "): it must be between 1 and min(in, out) = ", std::min(in, out),
                                    spec.init.changes_base ? " for init '" + spec.init.name + "'" : std::string(),
                                    ". Lower the rank, set a per-layer rank with rank_pattern, or set "
                                    "Config::allow_rank_above_min."));
    if (!std::isfinite(spec.scale))
      throw ConfigError(detail::str("lora: the scale of layer '", layer_path, "' is ", spec.scale,
                                    " (alpha ", spec.alpha, ", rank ", spec.rank, "). Use a finite alpha."));
    if (!(spec.dropout >= 0 && spec.dropout < 1))
      throw ConfigError(detail::str("lora: dropout must be in [0, 1), got ", spec.dropout, "."));

    InitContext ctx;
    ctx.A = torch::zeros({spec.rank, in}, torch::kFloat);
    ctx.B = torch::zeros({out, spec.rank}, torch::kFloat);
    ctx.weight = weight.detach().to(torch::kCPU, torch::kFloat).clone();
    ctx.scale = spec.scale;
    ctx.rank = spec.rank;
    ctx.generator = at::detail::createCPUGenerator(spec.seed);
    spec.init.apply(ctx);
    if (ctx.A.sizes() != torch::IntArrayRef{spec.rank, in} || ctx.B.sizes() != torch::IntArrayRef{out, spec.rank})
      throw ConfigError(detail::str("lora: init policy '", spec.init.name, "' changed the shape of A or B on layer '",
                                    layer_path, "' (A ", ctx.A.sizes(), ", B ", ctx.B.sizes(),
                                    "); it must fill them in place."));

    const auto opts = weight.options().requires_grad(false);
    Adapter a;
    if (spec.use_dora) {
      // m starts as the row norms of W + s B A (W after any base-changing init), so the layer's
      // output is unchanged at step 0 whatever the init.
      torch::NoGradGuard no_grad;
      auto norm = torch::addmm(ctx.weight, ctx.B, ctx.A, /*beta=*/1, /*alpha=*/spec.scale).norm(2, {1});
      a.magnitude = norm.to(opts).detach().set_requires_grad(true);
    }
    a.A = ctx.A.to(opts).set_requires_grad(true);
    a.B = ctx.B.to(opts).set_requires_grad(true);
    a.rank = spec.rank;
    a.alpha = spec.alpha;
    a.scale = spec.scale;
    a.dropout = spec.dropout;
    if (spec.init.changes_base) {
      torch::NoGradGuard no_grad;
      weight.copy_(ctx.weight);
    }
    holder(owner, "lora_A")->register_module(name, weight_holder(a.A));
    holder(owner, "lora_B")->register_module(name, weight_holder(a.B));
    if (a.dora()) holder(owner, kMagnitude)->register_module(name, weight_holder(a.magnitude));
    // Keep the registered tensors as the ones we hold (register_parameter may wrap them).
    a.A = holder(owner, "lora_A")->named_children()[name]->named_parameters(false)["weight"];
    a.B = holder(owner, "lora_B")->named_children()[name]->named_parameters(false)["weight"];
    if (a.dora()) a.magnitude = holder(owner, kMagnitude)->named_children()[name]->named_parameters(false)["weight"];
    active_.push_back(name);
    return adapters_.emplace(name, std::move(a)).first->second;
  }

  /// The holder module under which DoRA magnitudes are registered (PEFT's name).
  static constexpr const char* kMagnitude = "lora_magnitude_vector";

  /// Removes adapter `name` (unmerging it first if it was merged into `weight`).
  void remove(torch::nn::Module& owner, const std::string& name, torch::Tensor weight) {
    auto& a = get(name);
    if (a.merged) unmerge(weight, name);
    holder(owner, "lora_A")->unregister_module(name);
    holder(owner, "lora_B")->unregister_module(name);
    if (a.dora()) holder(owner, kMagnitude)->unregister_module(name);
    adapters_.erase(name);
    active_.erase(std::remove(active_.begin(), active_.end(), name), active_.end());
  }

  bool has(const std::string& name) const { return adapters_.count(name) > 0; }
  bool empty() const { return adapters_.empty(); }
  Adapter& get(const std::string& name) {
    auto it = adapters_.find(name);
    if (it == adapters_.end())
      throw ConfigError(detail::str("lora: no adapter named '", name, "' on this layer; it has: ", names_list(), "."));
    return it->second;
  }
  const std::map<std::string, Adapter>& adapters() const { return adapters_; }
  std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& kv : adapters_) n.push_back(kv.first);
    return n;
  }

  /// The adapters used by forward(), in the order given.
  const std::vector<std::string>& active() const { return active_; }
  void set_active(const std::vector<std::string>& names) {
    for (const auto& n : names) get(n);
    active_ = names;
  }

  /// enabled() false: forward() is exactly the base layer (merged adapters are unmerged first).
  bool enabled() const { return enabled_; }
  void set_enabled(bool on, torch::Tensor weight) {
    if (!on) unmerge(weight);
    enabled_ = on;
  }

  /// Merges adapter `name`, or each active adapter if `name` is empty, into `weight`:
  /// W <- W + s B A for LoRA, W <- (m / ||W + s B A||_row) (W + s B A) for DoRA (as PEFT).
  void merge(torch::Tensor weight, const std::string& name = "") {
    for (const auto& n : name.empty() ? active_ : std::vector<std::string>{name}) {
      auto& a = get(n);
      if (a.merged) continue;
      torch::NoGradGuard no_grad;
      if (a.dora()) {
        a.merged_factor = dora_factor(a, weight);
        weight.copy_(merge_one(a, weight, a.merged_factor));
      } else {
        weight.add_(a.delta_weight().to(weight.dtype()));
      }
      a.merged = true;
      merge_order_.push_back(n);
    }
  }
  /// Takes adapter `name` (if merged), or every merged adapter if `name` is empty, back out of
  /// `weight`. A DoRA merge rescales the whole weight, so adapters merged after `name` are
  /// taken out first and merged again afterwards (LoRA merges commute and are left in place).
  void unmerge(torch::Tensor weight, const std::string& name = "") {
    if (name.empty()) {
      while (!merge_order_.empty()) unmerge_last(weight);
      return;
    }
    const auto it = std::find(merge_order_.begin(), merge_order_.end(), name);
    if (it == merge_order_.end()) return;
    bool rescaled_after = false;
    for (auto j = it; j != merge_order_.end(); ++j) rescaled_after |= adapters_.at(*j).dora();
    if (!rescaled_after) {
      unmerge_one(adapters_.at(name), weight);
      merge_order_.erase(it);
      return;
    }
    std::vector<std::string> later(it + 1, merge_order_.end());
    while (merge_order_.back() != name) unmerge_last(weight);
    unmerge_last(weight);
    for (const auto& n : later) merge(weight, n);
  }

  /// The weight forward() effectively uses: `weight` with every pending adapter merged in as
  /// merge() would, computed on a copy (neither `weight` nor any adapter changes). For exports.
  torch::Tensor merged_weight(const torch::Tensor& weight) const {
    torch::NoGradGuard no_grad;
    torch::Tensor w = weight.detach().clone();
    for (const Adapter* a : pending()) {
      if (a->dora())
        w = merge_one(*a, w, dora_factor(*a, w));
      else
        w.add_(a->delta_weight().to(w.dtype()));
    }
    return w;
  }

  /// The adapters forward() must add on top of the (possibly merged) base weight.
  std::vector<const Adapter*> pending() const {
    std::vector<const Adapter*> out;
    if (!enabled_) return out;
    for (const auto& n : active_) {
      const auto& a = adapters_.at(n);
      if (!a.merged) out.push_back(&a);
    }
    return out;
  }

  /// Whether any adapter of this layer is a DoRA adapter.
  bool has_dora() const {
    for (const auto& kv : adapters_)
      if (kv.second.dora()) return true;
    return false;
  }

 private:
  /// DoRA's m / ||W + s B A||_row as an (out, 1) column, detached.
  static torch::Tensor dora_factor(const Adapter& a, const torch::Tensor& weight) {
    torch::NoGradGuard no_grad;
    const auto norm = functional::dora_weight_norm(weight, a.A, a.B, a.scale);
    return (a.magnitude.detach().to(norm.dtype()) / norm).unsqueeze(1);
  }
  /// factor * (W + s B A), a new tensor.
  static torch::Tensor merge_one(const Adapter& a, const torch::Tensor& weight, const torch::Tensor& factor) {
    torch::NoGradGuard no_grad;
    return (weight + a.delta_weight().to(weight.dtype())).mul_(factor.to(weight.dtype()));
  }

  static void unmerge_one(Adapter& a, torch::Tensor& weight) {
    torch::NoGradGuard no_grad;
    if (a.dora()) {
      weight.div_(a.merged_factor.to(weight.dtype())).sub_(a.delta_weight().to(weight.dtype()));
      a.merged_factor = torch::Tensor();
    } else {
      weight.sub_(a.delta_weight().to(weight.dtype()));
    }
    a.merged = false;
  }
  void unmerge_last(torch::Tensor& weight) {
    unmerge_one(adapters_.at(merge_order_.back()), weight);
    merge_order_.pop_back();
  }

  void check_name(const std::string& layer_path, const std::string& name) const {
    if (name.empty() || name.find('.') != std::string::npos)
      throw ConfigError(detail::str("lora: adapter name '", name,
                                    "' is invalid: it must be non-empty and contain no '.'. Use e.g. \"default\"."));
    if (has(name))
      throw ConfigError(detail::str("lora: layer '", layer_path, "' already has an adapter named '", name,
                                    "'. Remove it first, or choose another Config::adapter_name."));
  }

  std::string names_list() const {
    std::string s;
    for (const auto& kv : adapters_) s += (s.empty() ? "'" : ", '") + kv.first + "'";
    return s.empty() ? "none" : s;
  }

  static std::shared_ptr<torch::nn::Module> holder(torch::nn::Module& owner, const std::string& key) {
    auto children = owner.named_children();
    if (auto* found = children.find(key)) return *found;
    return owner.register_module(key, std::make_shared<torch::nn::Module>());
  }

  static std::shared_ptr<torch::nn::Module> weight_holder(const torch::Tensor& w) {
    auto m = std::make_shared<torch::nn::Module>();
    m->register_parameter("weight", w);
    return m;
  }

  std::map<std::string, Adapter> adapters_;
  std::vector<std::string> active_;
  std::vector<std::string> merge_order_;  ///< merged adapters, oldest first
  bool enabled_ = true;
};

}  // namespace lora

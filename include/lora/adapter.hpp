// One layer's adapters: the tensors A (r, in) and B (out, r) of each named adapter, how they
// are created, registered (as "lora_A.<name>.weight" / "lora_B.<name>.weight" under the layer,
// PEFT's in-memory names) and applied. Shared by lora::Linear and the plain-Linear path.
#pragma once

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
};

/// One adapter on one layer.
struct Adapter {
  torch::Tensor A;  ///< (r, in)
  torch::Tensor B;  ///< (out, r)
  int64_t rank = 0;
  double alpha = 0;
  double scale = 1;
  double dropout = 0;
  bool merged = false;  ///< s * B A has been added into the base weight

  /// s * B A, (out, in): what this adapter adds to the base weight.
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

/// The unfused reference: x W^T + b + s * (dropout(x) A^T) B^T, for tests and documentation.
inline torch::Tensor lora_linear_reference(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                           const torch::Tensor& A, const torch::Tensor& B, double scale,
                                           const torch::Tensor& dropout_input = {}) {
  auto base = torch::matmul(x, W.t());
  if (b.defined()) base = base + b;
  const auto& xd = dropout_input.defined() ? dropout_input : x;
  return base + scale * torch::matmul(torch::matmul(xd, A.t()), B.t());
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
    if (spec.rank <= 0 || spec.rank > std::min(in, out))
      throw ConfigError(detail::str("lora: rank ", spec.rank, " is invalid for layer '", layer_path, "' of shape (out ",
                                    out, ", in ", in, "): it must be between 1 and min(in, out) = ",
                                    std::min(in, out), ". Lower the rank, or set a per-layer rank with rank_pattern."));
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
    // Keep the registered tensors as the ones we hold (register_parameter may wrap them).
    a.A = holder(owner, "lora_A")->named_children()[name]->named_parameters(false)["weight"];
    a.B = holder(owner, "lora_B")->named_children()[name]->named_parameters(false)["weight"];
    active_.push_back(name);
    return adapters_.emplace(name, std::move(a)).first->second;
  }

  /// Removes adapter `name` (unmerging it first if it was merged into `weight`).
  void remove(torch::nn::Module& owner, const std::string& name, torch::Tensor weight) {
    auto& a = get(name);
    if (a.merged) unmerge_one(a, weight);
    holder(owner, "lora_A")->unregister_module(name);
    holder(owner, "lora_B")->unregister_module(name);
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
    if (!on)
      for (auto& kv : adapters_)
        if (kv.second.merged) unmerge_one(kv.second, weight);
    enabled_ = on;
  }

  /// Adds s * B A into `weight`: of adapter `name`, or of each active adapter if `name` is empty.
  void merge(torch::Tensor weight, const std::string& name = "") {
    for (const auto& n : name.empty() ? active_ : std::vector<std::string>{name}) {
      auto& a = get(n);
      if (a.merged) continue;
      torch::NoGradGuard no_grad;
      weight.add_(a.delta_weight().to(weight.dtype()));
      a.merged = true;
    }
  }
  /// Subtracts from `weight` adapter `name` if merged, or every merged adapter if `name` is empty.
  void unmerge(torch::Tensor weight, const std::string& name = "") {
    for (auto& kv : adapters_)
      if (kv.second.merged && (name.empty() || kv.first == name)) unmerge_one(kv.second, weight);
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

 private:
  static void unmerge_one(Adapter& a, torch::Tensor& weight) {
    torch::NoGradGuard no_grad;
    weight.sub_(a.delta_weight().to(weight.dtype()));
    a.merged = false;
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
  bool enabled_ = true;
};

}  // namespace lora

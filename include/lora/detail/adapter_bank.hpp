// The adapters of one layer (AdapterBank): creates each named adapter with its init policy,
// registers its tensors on the layer, keeps which adapters are active, merged and enabled,
// and merges and unmerges them (LoRA: W + s B A; DoRA: (m / ||W + s B A||_row) (W + s B A)).
// lora::Linear and the compatibility path (parametrization.hpp) each own one.
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../adapter.hpp"
#include "../error.hpp"
#include "../functional.hpp"
#include "../init.hpp"
#include "match.hpp"

namespace lora::detail {

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
    InitContext ctx;
    ctx.A = torch::zeros({spec.rank, in}, torch::kFloat);
    ctx.B = torch::zeros({out, spec.rank}, torch::kFloat);
    ctx.weight = weight.detach().to(torch::kCPU, torch::kFloat).clone();
    ctx.scale = spec.scale;
    ctx.rank = spec.rank;
    ctx.generator = at::detail::createCPUGenerator(spec.seed);
    spec.init.apply(ctx);
    if (ctx.A.sizes() != torch::IntArrayRef{spec.rank, in} || ctx.B.sizes() != torch::IntArrayRef{out, spec.rank})
      throw ConfigError(str("lora: init policy '", spec.init.name, "' changed the shape of A or B on layer '",
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
  Adapter& get(const std::string& name) { return const_cast<Adapter&>(static_cast<const AdapterBank&>(*this).get(name)); }
  const Adapter& get(const std::string& name) const {
    auto it = adapters_.find(name);
    if (it == adapters_.end())
      throw ConfigError(str("lora: no adapter named '", name, "' on this layer; it has: ", quoted_list(names()), "."));
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
      throw ConfigError(str("lora: adapter name '", name,
                                    "' is invalid: it must be non-empty and contain no '.'. Use e.g. \"default\"."));
    if (has(name))
      throw ConfigError(str("lora: layer '", layer_path, "' already has an adapter named '", name,
                                    "'. Remove it first, or choose another Config::adapter_name."));
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

}  // namespace lora::detail

// The adapters of one layer (LayerAdapterSet): creates each named adapter with its init policy,
// registers its tensors on the layer, keeps which adapters are active, merged and enabled,
// and merges and unmerges them, each as its variant says (detail/variant.hpp), on its layer
// kind's view of the weight (detail/kind.hpp). Every layer that carries adapters owns one
// (detail/adapter_host.hpp): the drop-in layers, and each weight (or slice) of a plain torch::nn
// layer on the compatibility path (parametrization.hpp).
#pragma once

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../layer_adapter.hpp"
#include "../error.hpp"
#include "../init.hpp"
#include "match.hpp"
#include "variant.hpp"
#include "variant_registry.hpp"

namespace lora::detail {

/// The adapters of one layer, registered on that layer (the owner) as submodules "lora_A",
/// "lora_B" (Embedding: "lora_embedding_A", "lora_embedding_B"; and a variant's own, e.g.
/// "lora_magnitude_vector"), each with one child per adapter name holding "weight".
class LayerAdapterSet {
 public:
  /// Creates adapter `name` on `owner` (where its tensors are registered), for a layer of kind
  /// `kind` whose base weight is `weight`. The init policy fills A and B as matrices on the
  /// kind's matrix view of `weight` (detail/kind.hpp); policies that change the base (PiSSA,
  /// OLoRA) rewrite that view in place.
  LayerAdapter& add(torch::nn::Module& owner, const std::string& layer_path, const std::string& name,
               const LayerAdapterSpec& spec, torch::Tensor weight, std::shared_ptr<const Kind> kind) {
    check_name(layer_path, name);
    const auto view = kind->view();
    const auto M = view.of(weight.detach());  // (out, in) as a matrix
    const auto out = M.size(0), in = M.size(1);
    InitContext ctx;
    ctx.A = torch::zeros({spec.rank, in}, torch::kFloat);
    ctx.B = torch::zeros({out, spec.rank}, torch::kFloat);
    ctx.weight = M.to(torch::kCPU, torch::kFloat).contiguous().clone();
    ctx.scale = spec.scale();
    ctx.rank = spec.rank;
    ctx.embedding = kind->embedding();
    ctx.generator = at::detail::createCPUGenerator(spec.seed);
    const auto M0 = spec.init.changes_base ? ctx.weight.clone() : ctx.weight;
    spec.init.apply(ctx);
    if (ctx.A.sizes() != torch::IntArrayRef{spec.rank, in} || ctx.B.sizes() != torch::IntArrayRef{out, spec.rank})
      throw ConfigError(str("lora: init policy '", spec.init.name, "' changed the shape of A or B on layer '",
                                    layer_path, "' (A ", ctx.A.sizes(), ", B ", ctx.B.sizes(),
                                    "); it must fill them in place."));
    kind->after_init(ctx.A, ctx.B, ctx.weight, M0);

    const auto opts = weight.options().dtype(spec.dtype_for(weight.scalar_type())).requires_grad(false);
    LayerAdapter a;
    a.variant_ = &variant_for(spec.use_dora);
    a.kind_ = std::move(kind);
    a.A = ctx.A.reshape(a.kind().a_shape(spec.rank, in)).to(opts).set_requires_grad(true);
    a.B = ctx.B.reshape(a.kind().b_shape(out, spec.rank)).to(opts).set_requires_grad(true);
    a.rank = spec.rank;
    a.alpha = spec.alpha;
    a.scale = a.configured_scale_ = spec.scale();
    a.dropout = spec.dropout;
    a.variant().init(a, ctx, opts);
    if (spec.init.changes_base) {
      torch::NoGradGuard no_grad;
      view.of(weight).copy_(ctx.weight);
    }
    for (const auto& t : a.variant().tensors(a.kind())) {
      auto& tensor = a.*t.member;
      holder(owner, t.holder)->register_module(name, weight_holder(tensor));
      // Keep the registered tensor as the one we hold (register_parameter may wrap it).
      tensor = holder(owner, t.holder)->named_children()[name]->named_parameters(false)["weight"];
    }
    active_.push_back(name);
    return adapters_.emplace(name, std::move(a)).first->second;
  }

  /// Removes adapter `name` (unmerging it first if it was merged into `weight`).
  void remove(torch::nn::Module& owner, const std::string& name, torch::Tensor weight) {
    auto& a = get(name);
    if (a.merged()) unmerge(weight, name);
    for (const auto& t : a.variant().tensors(a.kind())) holder(owner, t.holder)->unregister_module(name);
    adapters_.erase(name);
    active_.erase(std::remove(active_.begin(), active_.end(), name), active_.end());
  }

  bool has(const std::string& name) const { return adapters_.count(name) > 0; }
  bool empty() const { return adapters_.empty(); }
  LayerAdapter& get(const std::string& name) { return const_cast<LayerAdapter&>(static_cast<const LayerAdapterSet&>(*this).get(name)); }
  const LayerAdapter& get(const std::string& name) const {
    auto it = adapters_.find(name);
    if (it == adapters_.end())
      throw ConfigError(str("lora: no adapter named '", name, "' on this layer; it has: ", quoted_list(names()), "."));
    return it->second;
  }
  const std::map<std::string, LayerAdapter>& adapters() const { return adapters_; }
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

  /// Sets adapter `name`'s scale s (what forward() and merge() use); `configured`: also the
  /// scale restore_scale() returns to (its configured_scale(); a hot swap gives it the file's).
  /// A merged adapter's scale is in the weight: refused (ConfigError), unmerge it first.
  void set_scale(const std::string& name, double s, bool configured = false) {
    auto& a = get(name);
    if (!std::isfinite(s))
      throw ConfigError(str("lora: the scale of adapter '", name, "' must be finite, got ", s, "."));
    if (a.merged_)
      throw ConfigError(str("lora: adapter '", name, "' is merged into the weight, so its scale ", a.scale,
                            " is too; unmerge it before changing the scale."));
    a.scale = s;
    if (configured) a.configured_scale_ = s;
  }

  /// enabled() false: forward() is exactly the base layer (merged adapters are unmerged first).
  bool enabled() const { return enabled_; }
  void set_enabled(bool on, torch::Tensor weight) {
    if (!on) unmerge(weight);
    enabled_ = on;
  }

  /// Merges adapter `name`, or each active adapter if `name` is empty, into `weight`, as its
  /// variant says (LoRA: W <- W + s B A).
  void merge(torch::Tensor weight, const std::string& name = "") {
    for (const auto& n : name.empty() ? active_ : std::vector<std::string>{name}) {
      auto& a = get(n);
      if (a.merged()) continue;
      merged_.push_back({n, a.variant().merge(a, weight)});
      a.merged_ = true;
    }
  }
  /// Takes adapter `name` (if merged), or every merged adapter if `name` is empty, back out of
  /// `weight`. Merges that only add commute and stay in place; if `name`'s or a later merge
  /// does more (DoRA's rescales the whole weight), the adapters merged after `name` are taken
  /// out first and merged again afterwards.
  void unmerge(torch::Tensor weight, const std::string& name = "") {
    if (name.empty()) {
      while (!merged_.empty()) unmerge_last(weight);
      return;
    }
    const auto it = std::find_if(merged_.begin(), merged_.end(), [&](const Merge& m) { return m.name == name; });
    if (it == merged_.end()) return;
    bool commute = true;
    for (auto j = it; j != merged_.end(); ++j) commute &= adapters_.at(j->name).variant().merge_adds();
    if (commute) {
      unmerge_one(*it, weight);
      merged_.erase(it);
      return;
    }
    std::vector<std::string> later;
    for (auto j = it + 1; j != merged_.end(); ++j) later.push_back(j->name);
    while (merged_.back().name != name) unmerge_last(weight);
    unmerge_last(weight);
    for (const auto& n : later) merge(weight, n);
  }

  /// The weight forward() effectively uses: `weight` with every pending adapter merged in as
  /// merge() would, computed on a copy (neither `weight` nor any adapter changes). For exports.
  torch::Tensor merged_weight(const torch::Tensor& weight) const {
    torch::NoGradGuard no_grad;
    torch::Tensor w = weight.detach().clone();
    for (const LayerAdapter* a : pending()) a->variant().merge(*a, w);
    return w;
  }

  /// The adapters forward() must add on top of the (possibly merged) base weight.
  std::vector<const LayerAdapter*> pending() const {
    std::vector<const LayerAdapter*> out;
    if (!enabled_) return out;
    for (const auto& n : active_) {
      const auto& a = adapters_.at(n);
      if (!a.merged()) out.push_back(&a);
    }
    return out;
  }


 private:
  /// One merged adapter, and what its variant's merge() returned to undo it.
  struct Merge {
    std::string name;
    torch::Tensor record;
  };

  void unmerge_one(const Merge& m, const torch::Tensor& weight) {
    auto& a = adapters_.at(m.name);
    a.variant().unmerge(a, weight, m.record);
    a.merged_ = false;
  }
  void unmerge_last(const torch::Tensor& weight) {
    unmerge_one(merged_.back(), weight);
    merged_.pop_back();
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

  std::map<std::string, LayerAdapter> adapters_;
  std::vector<std::string> active_;
  std::vector<Merge> merged_;  ///< merged adapters, oldest first
  bool enabled_ = true;
};

}  // namespace lora::detail

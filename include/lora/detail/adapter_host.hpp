// What every layer that carries adapters offers, implemented once: the drop-in layers
// (lora::Linear, lora::Embedding, lora::Conv1d/2d/3d) and, on the compatibility path, each
// adapted weight or weight slice of a plain torch::nn layer (parametrization.hpp). A host owns
// the layer's LayerAdapterSet and says where adapter tensors are registered, which tensor merges
// write into, the layer's kind, and what must happen after a change (the compatibility path
// recomputes the effective weight).
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../layer_adapter.hpp"
#include "layer_adapter_set.hpp"
#include "kind.hpp"
#include "routing.hpp"

namespace lora::detail {

/// Every check of adapter `spec` on the layer at `path` of kind `kind` with base weight `weight`,
/// in one place (the layer's own options, then check_adapter_spec); `reparametrized`: the
/// compatibility path. inject() runs it on every selected layer before changing any.
inline void check_layer_spec(const LayerAdapterSpec& spec, const std::string& path, const Kind& kind,
                             const torch::Tensor& weight, bool reparametrized) {
  if (const auto why = kind.unsupported(reparametrized); !why.empty())
    throw ConfigError(str("lora: layer '", path, "' (", kind.name(), ") cannot carry a LoRA adapter: ", why,
                          ". Exclude it (Config::exclude) or target other layers."));
  const auto M = kind.view().of(weight);
  check_adapter_spec(spec, path, kind, M.size(1), M.size(0), reparametrized);
}

class AdapterHost {
 public:
  virtual ~AdapterHost() = default;

  /// Adds adapter `name`, created as `spec` says (rank, scale, init, variant, ...). `path` names
  /// the layer in error messages. Throws ConfigError for a spec that does not fit the layer;
  /// then nothing has changed.
  const LayerAdapter& add_adapter(const std::string& name, const LayerAdapterSpec& spec, const std::string& path = "") {
    const auto& where = path.empty() ? host_name() : path;
    check(spec, where);
    auto& a = bank_.add(adapter_owner(), where, name, spec, base_weight(), kind());
    sync();
    return a;
  }
  /// Every check add_adapter() makes, without adding (inject() checks all layers first).
  void check(const LayerAdapterSpec& spec, const std::string& path) const {
    check_layer_spec(spec, path, *kind(), base_weight(), reparametrized());
  }
  void remove_adapter(const std::string& name) {
    bank_.remove(adapter_owner(), name, base_weight());
    sync();
  }
  /// Merges adapter `name` (or every active one) into the base weight; forward() then skips it.
  void merge(const std::string& name = "") {
    bank_.merge(base_weight(), name);
    sync();
  }
  /// Takes adapter `name` (or every merged one) back out of the base weight.
  void unmerge(const std::string& name = "") {
    bank_.unmerge(base_weight(), name);
    sync();
  }
  /// false: forward() is exactly the base layer (merged adapters are unmerged first).
  void set_adapters_enabled(bool on) {
    bank_.set_enabled(on, base_weight());
    sync();
  }
  void set_active_adapters(const std::vector<std::string>& names) {
    bank_.set_active(names);
    sync();
  }
  /// Sets adapter `name`'s scale s (its configured_scale() stays, unless `configured`: then it
  /// becomes s too). Refused for a merged adapter.
  void set_adapter_scale(const std::string& name, double s, bool configured = false) {
    bank_.set_scale(name, s, configured);
    sync();
  }
  /// false after set_adapters_enabled(false).
  bool adapters_enabled() const { return bank_.enabled(); }

  bool has_adapter(const std::string& name) const { return bank_.has(name); }
  /// The adapter `name`; throws ConfigError, listing the names there are, if there is none.
  const LayerAdapter& adapter(const std::string& name) const { return bank_.get(name); }
  /// Every adapter's name, sorted.
  std::vector<std::string> adapter_names() const { return bank_.names(); }
  /// The adapters forward() uses, in order (new adapters are active).
  const std::vector<std::string>& active_adapters() const { return bank_.active(); }
  /// Whether forward() adds any adapter on top of the base weight (active, unmerged, enabled).
  bool has_pending_adapters() const { return !bank_.pending().empty(); }
  /// The weight forward() effectively uses: the base weight with every pending adapter merged
  /// in as merge() would, computed on a copy (nothing changes). For exports.
  torch::Tensor merged_weight() const { return bank_.merged_weight(base_weight()); }
  /// The layer's kind (detail/kind.hpp).
  virtual std::shared_ptr<const Kind> kind() const = 0;
  /// true on the compatibility path: the adapters re-parametrize a plain torch::nn layer's weight.
  virtual bool reparametrized() const { return false; }
  /// Recomputes what depends on the adapters (the compatibility path's effective weight).
  virtual void sync() {}

 protected:
  /// The module the adapters' tensors are registered on.
  virtual torch::nn::Module& adapter_owner() = 0;
  /// The base weight (the registered parameter): merges write into it.
  virtual torch::Tensor base_weight() const = 0;
  /// The layer's name in error messages when add_adapter() is given no path.
  virtual std::string host_name() const { return "lora::" + kind()->name(); }

  /// Under this thread's routing `r` (lora/routing.hpp), whether every row of `x` uses the same
  /// adapter of this layer (or none): then `pending` is set to it (or emptied), and the layer's
  /// ordinary forward() with it computes the routed output exactly (fused, for lora::Linear).
  bool routed_uniformly(const Routing& r, const torch::Tensor& x, std::vector<const LayerAdapter*>& pending) const {
    const auto [in_use, slot] = routed_slots(r, x);
    if (std::adjacent_find(slot.begin(), slot.end(), std::not_equal_to<int64_t>()) != slot.end()) return false;
    pending.clear();
    if (slot.front() < static_cast<int64_t>(in_use.size())) pending.push_back(in_use[static_cast<size_t>(slot.front())]);
    return true;
  }

  /// `y` (the base output) plus each row's adapter branch for input `x`, under this thread's
  /// routing `r` (lora/routing.hpp): the drop-in layers' forward() while a RowRouting lives.
  torch::Tensor add_routed(const Routing& r, const torch::Tensor& y, const torch::Tensor& x, bool training) const {
    const auto [in_use, slot] = routed_slots(r, x);
    if (in_use.empty()) return y;  // no routed adapter here: every row gets the base output
    const auto idx = torch::tensor(slot, torch::kLong).to(x.device());
    const auto dt = in_use.front()->A.scalar_type();
    if (dt == y.scalar_type()) return kind()->add_routed_branch(in_use, idx, y, x, training);
    // Float32 adapters on a half-precision base: cast at the branch's edges.
    const auto xa = x.is_floating_point() ? x.to(dt) : x;
    return kind()->add_routed_branch(in_use, idx, y.to(dt), xa, training).to(y.scalar_type());
  }

  /// The adapters of this layer that routing `r` uses, and each row's slot among them
  /// (in_use.size(): none), after the checks every routed forward makes.
  std::pair<std::vector<const LayerAdapter*>, std::vector<int64_t>> routed_slots(const Routing& r,
                                                                                 const torch::Tensor& x) const {
    const auto rows = static_cast<int64_t>(r.row_name.size());
    if (x.dim() == 0 || x.size(0) != rows)
      throw ShapeError(str("lora::RowRouting routes ", rows, " rows, but ", host_name(), " got an input of shape ",
                           x.sizes(), ", whose first dimension is not the batch of ", rows,
                           " rows. Give one name per row of the batch; a model that reshapes its batch before this "
                           "layer cannot be routed per row."));
    std::vector<const LayerAdapter*> in_use;
    std::vector<int64_t> slot_of_name(r.names.size(), -1);
    for (size_t n = 0; n < r.names.size(); ++n) {
      if (!bank_.has(r.names[n])) continue;
      const auto& a = bank_.get(r.names[n]);
      if (a.merged() || a.dora() || !bank_.enabled())
        throw ConfigError(str("lora::RowRouting: adapter '", r.names[n], "' on ", host_name(), " is ",
                              a.merged() ? "merged" : a.dora() ? "a DoRA adapter" : "disabled",
                              " (changed after the RowRouting was made); it cannot serve single rows."));
      slot_of_name[n] = static_cast<int64_t>(in_use.size());
      in_use.push_back(&a);
    }
    const auto none = static_cast<int64_t>(in_use.size());
    std::vector<int64_t> slot;
    for (const auto n : r.row_name) slot.push_back(n < 0 || slot_of_name[n] < 0 ? none : slot_of_name[n]);
    return {in_use, slot};
  }

  const LayerAdapterSet& bank() const { return bank_; }

 private:
  LayerAdapterSet bank_;
};

}  // namespace lora::detail

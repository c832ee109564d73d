// What every layer that carries adapters offers, implemented once: the drop-in layers
// (lora::Linear, lora::Embedding, lora::Conv1d/2d/3d) and, on the compatibility path, each
// adapted weight or weight slice of a plain torch::nn layer (parametrization.hpp). A host owns
// the layer's LayerAdapterSet and says where adapter tensors are registered, which tensor merges
// write into, the layer's kind, and what must happen after a change (the compatibility path
// recomputes the effective weight).
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>
#include <torch/utils.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <mutex>
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

  /// The adapters of this layer that this thread's routing `r` (lora/routing.hpp) uses, and
  /// each row's slot among them, after the checks every routed forward makes. When the rows
  /// are uniform() the layer's ordinary forward with rows.uniform_adapters() computes the
  /// routed output exactly (fused, for lora::Linear); otherwise add_routed() does.
  RoutedRows routed_rows(const Routing& r, const torch::Tensor& x) const {
    const auto rows = static_cast<int64_t>(r.row_name.size());
    if (x.dim() == 0 || x.size(0) != rows)
      throw ShapeError(str("lora::RowRouting routes ", rows, " rows, but ", host_name(), " got an input of shape ",
                           x.sizes(), ", whose first dimension is not the batch of ", rows,
                           " rows. Give one name per row of the batch; a model that reshapes its batch before this "
                           "layer cannot be routed per row."));
    RoutedRows out;
    std::vector<int64_t> slot_of_name(r.names.size(), -1);
    for (size_t n = 0; n < r.names.size(); ++n) {
      if (!bank_.has(r.names[n])) continue;
      const auto& a = bank_.get(r.names[n]);
      if (a.merged() || a.dora() || !bank_.enabled())
        throw ConfigError(str("lora::RowRouting: adapter '", r.names[n], "' on ", host_name(), " is ",
                              a.merged() ? "merged" : a.dora() ? "a DoRA adapter" : "disabled",
                              " (changed after the RowRouting was made); it cannot serve single rows."));
      slot_of_name[n] = static_cast<int64_t>(out.in_use.size());
      out.in_use.push_back(&a);
    }
    const auto none = static_cast<int64_t>(out.in_use.size());
    for (const auto n : r.row_name) out.slot.push_back(n < 0 || slot_of_name[n] < 0 ? none : slot_of_name[n]);
    return out;
  }

  /// `y` (the base output) plus each row's adapter branch for input `x`, as `rows` routes them
  /// (routed_rows()): the drop-in layers' forward() while a RowRouting lives. Rows in any order
  /// take the gathered computation (the kind's add_routed_branch over the stacked adapters,
  /// one small product per row). Rows grouped by adapter (each adapter's rows consecutive, as
  /// --pack and a server that sorts its batch give) take one product per group instead: as
  /// the gathered computation over groups of equal size on a token-wise kind (Linear,
  /// Embedding), otherwise one ordinary branch per group on slices of the batch.
  torch::Tensor add_routed(const RoutedRows& rows, const torch::Tensor& y, const torch::Tensor& x, bool training) const {
    if (rows.in_use.empty()) return y;  // no routed adapter here: every row gets the base output
    // Float32 adapters on a half-precision base: cast at the branch's edges.
    const auto dt = rows.in_use.front()->A.scalar_type();
    const bool cast = dt != y.scalar_type();
    const auto ya = cast ? y.to(dt) : y;
    const auto xa = cast && x.is_floating_point() ? x.to(dt) : x;
    torch::Tensor out;
    const auto runs = row_runs(rows.slot);
    const bool grouped = runs.size() <= rows.in_use.size() + 1;  // each slot in one run at most
    const bool equal = std::all_of(runs.begin(), runs.end(), [&](const RowRun& r) { return r.length == runs[0].length; });
    if (grouped && equal && kind()->token_wise()) {
      // Each group of L rows as one row of M = runs.size(): (N, ...) -> (M, L, ...).
      const auto M = static_cast<int64_t>(runs.size());
      const auto by_group = [&](const torch::Tensor& t) {
        auto sizes = t.sizes().vec();
        sizes[0] = runs[0].length;
        sizes.insert(sizes.begin(), M);
        return t.reshape(sizes);
      };
      std::vector<int64_t> group_slot;
      for (const auto& run : runs) group_slot.push_back(run.slot);
      const auto idx = torch::tensor(group_slot, torch::kLong).to(x.device());
      out = kind()->add_routed_branch(stacked(rows.in_use), idx, by_group(ya), by_group(xa), training).reshape(ya.sizes());
    } else if (grouped) {
      const auto none = static_cast<int64_t>(rows.in_use.size());
      std::vector<int64_t> lengths;
      for (const auto& run : runs) lengths.push_back(run.length);
      // split, not narrow: its backward is one cat, where each narrow's would fill a zero
      // tensor of the whole batch.
      auto parts = ya.split_with_sizes(lengths, /*dim=*/0);
      const auto xs = xa.split_with_sizes(lengths, /*dim=*/0);
      for (size_t i = 0; i < runs.size(); ++i)
        if (runs[i].slot != none)
          parts[i] = kind()->add_branch(*rows.in_use[static_cast<size_t>(runs[i].slot)], parts[i], xs[i], training);
      out = torch::cat(parts, /*dim=*/0);
    } else {
      const auto idx = torch::tensor(rows.slot, torch::kLong).to(x.device());
      out = kind()->add_routed_branch(stacked(rows.in_use), idx, ya, xa, training);
    }
    return cast ? out.to(y.scalar_type()) : out;
  }

  /// `in_use` stacked (stack_adapters). Without gradients (a server's routed passes) the
  /// stack is kept and reused while the same adapters are routed and none of their tensors or
  /// scales changed (a tensor's version counter moves with every in-place write: training
  /// steps, hot swaps); with gradients it is built on every pass, as autograd needs.
  StackedAdapters stacked(const std::vector<const LayerAdapter*>& in_use) const {
    bool grad = false;
    if (torch::GradMode::is_enabled())
      for (const auto* a : in_use) grad |= a->A.requires_grad() || a->B.requires_grad();
    const auto build = [&] {
      auto [A, B] = stack_adapters(in_use);
      return StackedAdapters{in_use, std::move(A), std::move(B)};
    };
    if (grad) return build();
    std::lock_guard<std::mutex> lock(stack_cache_.mutex);
    if (!stack_cache_.holds(in_use)) stack_cache_.keep(in_use, build());
    return stack_cache_.stack;
  }

  const LayerAdapterSet& bank() const { return bank_; }

 private:
  /// The last stack built without gradients, and what it was built from (stacked()). The
  /// tensors are held, so none of them can be freed and another allocated in its place.
  struct StackCache {
    StackCache() = default;
    StackCache(const StackCache&) {}  // a copied layer (Module::clone) starts without
    StackCache& operator=(const StackCache&) { return *this; }
    /// What one adapter's part of the stack was built from. Module::to() swaps a tensor's
    /// storage in place (same tensor, new data, dtype or device), hence data, dtype, device.
    struct Source {
      const LayerAdapter* adapter;
      torch::Tensor A, B;
      int64_t a_version, b_version;
      const void* a_data;
      const void* b_data;
      c10::ScalarType dtype;
      c10::Device device;
      double scale;
      int64_t rank;
      static Source of(const LayerAdapter* a) {
        return {a,
                a->A,
                a->B,
                static_cast<int64_t>(a->A._version()),
                static_cast<int64_t>(a->B._version()),
                a->A.data_ptr(),
                a->B.data_ptr(),
                a->A.scalar_type(),
                a->A.device(),
                a->scale,
                a->rank};
      }
      bool same(const Source& o) const {
        return adapter == o.adapter && A.is_same(o.A) && B.is_same(o.B) && a_version == o.a_version &&
               b_version == o.b_version && a_data == o.a_data && b_data == o.b_data && dtype == o.dtype &&
               device == o.device && scale == o.scale && rank == o.rank;
      }
    };
    bool holds(const std::vector<const LayerAdapter*>& in_use) const {
      if (sources.size() != in_use.size()) return false;
      for (size_t i = 0; i < in_use.size(); ++i)
        if (!sources[i].same(Source::of(in_use[i]))) return false;
      return true;
    }
    void keep(const std::vector<const LayerAdapter*>& in_use, StackedAdapters st) {
      sources.clear();
      for (const auto* a : in_use) sources.push_back(Source::of(a));
      stack = std::move(st);
    }
    std::mutex mutex;  // forward passes of several threads
    std::vector<Source> sources;
    StackedAdapters stack;
  };

  LayerAdapterSet bank_;
  mutable StackCache stack_cache_;
};

}  // namespace lora::detail

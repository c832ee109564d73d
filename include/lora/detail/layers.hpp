// The model's layers as inject() and the ModelAdapter handle see them: which modules are the
// library's own, which layers can carry an adapter, and one such layer of any kind: a drop-in
// layer of the library's (lora::Linear, lora::Embedding, lora::Conv1d/2d/3d), a plain torch::nn
// layer (Linear, Embedding, Conv1d/2d/3d; the compatibility path, parametrization.hpp), or a
// part of a plain torch::nn::MultiheadAttention's in_proj_weight (kinds/attention.hpp).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../kinds/attention.hpp"
#include "../kinds/conv.hpp"
#include "../kinds/embedding.hpp"
#include "../kinds/linear.hpp"
#include "adapter_host.hpp"
#include "parametrization.hpp"
#include "variant_registry.hpp"

namespace lora::detail {

/// True for the modules and parameters the library itself registers (the holders of every
/// kind's and variant's adapter tensors, parametrizations) and everything under them.
inline bool is_internal_path(const std::string& path) {
  static const std::vector<std::string> parts = [] {
    std::vector<std::string> out = {WeightParametrizationImpl::kChildName};
    for (const auto& t : all_adapter_tensors()) out.push_back(t.holder);
    return out;
  }();
  for (const auto& p : parts)
    if (path == p || path.rfind(p + ".", 0) == 0 || path.find("." + p) != std::string::npos) return true;
  return false;
}

/// Every module path of the model except the library's own, in registration order.
inline std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> user_modules(torch::nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> out;
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false))
    if (!is_internal_path(item.key())) out.emplace_back(item.key(), item.value());
  return out;
}

/// A layer of the model that can carry adapters (see the top).
struct Layer {
  std::string path;  ///< the module's path; for an in_proj part "<attention>.in_proj[.q|.k|.v]"
  std::string module_path;  ///< the module's path (the attention's for an in_proj part)
  std::shared_ptr<torch::nn::Module> module;  ///< the layer (the attention for an in_proj part)
  std::shared_ptr<const Kind> kind;
  bool drop_in = false;  ///< a layer of the library's; else a plain torch::nn one, re-parametrized
  // Plain layers: the weight's member, its parameter name and the part of it.
  WeightParametrizationImpl::Slot slot;
  std::string param = "weight";
  std::string part;
  /// Where the adapters live: the drop-in layer itself, or the plain layer's part (null until
  /// it gets its first adapter). Owned by `module` (directly or through its parametrization).
  AdapterHost* host = nullptr;

  /// The base weight (the registered parameter).
  torch::Tensor weight() const { return module->named_parameters(/*recurse=*/false)[param]; }
  /// The weight's matrix view for this kind (detail/kind.hpp): (out_features, in_features).
  int64_t in_features() const { return kind->view().of(weight()).size(1); }
  int64_t out_features() const { return kind->view().of(weight()).size(0); }
  /// Whether the layer carries any adapter (a drop-in may have none yet).
  bool adapted() const { return host && !host->adapter_names().empty(); }

  bool has_adapter(const std::string& n) const { return host && host->has_adapter(n); }
  const LayerAdapter& adapter(const std::string& n) const { return get().adapter(n); }
  std::vector<std::string> adapter_names() const { return host ? host->adapter_names() : std::vector<std::string>{}; }
  void set_active(const std::vector<std::string>& names) const { get().set_active_adapters(names); }
  void merge(const std::string& n) const { get().merge(n); }
  void unmerge(const std::string& n) const { get().unmerge(n); }
  void set_enabled(bool on) const { get().set_adapters_enabled(on); }
  void set_scale(const std::string& n, double s, bool configured = false) const {
    get().set_adapter_scale(n, s, configured);
  }
  void remove(const std::string& n) const { get().remove_adapter(n); }
  bool has_pending_adapters() const { return host && host->has_pending_adapters(); }
  torch::Tensor merged_weight() const { return get().merged_weight(); }
  /// Recomputes a plain layer's effective weight (a no-op for drop-ins).
  void sync() const {
    if (host) host->sync();
  }
  /// Every check add() makes, before anything changes.
  void check(const LayerAdapterSpec& spec) const { check_layer_spec(spec, path, *kind, weight(), !drop_in); }
  /// Adds adapter `name` (for a plain layer, creating its parametrization on first use).
  void add(const std::string& name, const LayerAdapterSpec& spec) {
    if (!host) host = &WeightParametrizationImpl::of(module, slot, param)->part(part, kind, path);
    host->add_adapter(name, spec, path);
  }

 private:
  AdapterHost& get() const {
    if (!host) throw ConfigError(str("lora: layer '", path, "' has no adapter."));
    return *host;
  }
};

/// The layer of a plain module `m` at `path` whose weight `slot` reads, of kind `kind`, with
/// its existing part if it has adapters.
inline Layer plain_layer(const std::string& path, const std::shared_ptr<torch::nn::Module>& m,
                   std::shared_ptr<const Kind> kind, WeightParametrizationImpl::Slot slot,
                   const std::string& param = "weight", const std::string& part = "") {
  Layer l;
  l.path = path;
  l.module_path = path;
  l.module = m;
  l.kind = std::move(kind);
  l.slot = std::move(slot);
  l.param = param;
  l.part = part;
  if (const auto p = WeightParametrizationImpl::find(*m)) l.host = p->find_part(part);
  return l;
}

template <size_t D, typename Impl>
bool add_conv_layer(const std::string& path, const std::shared_ptr<torch::nn::Module>& m, std::vector<Layer>& out) {
  const auto c = std::dynamic_pointer_cast<Impl>(m);
  if (!c) return false;
  out.push_back(plain_layer(path, m, std::make_shared<const kinds::Conv<D>>(c->options),
                      [](torch::nn::Module& x) -> torch::Tensor& { return dynamic_cast<Impl&>(x).weight; }));
  return true;
}

/// Every layer of `model` that can carry adapters (each module once, under its first path), in
/// registration order; an attention's in_proj parts come right after the attention.
inline std::vector<Layer> layers_of(torch::nn::Module& model) {
  std::vector<Layer> out;
  std::set<const torch::nn::Module*> seen;
  for (const auto& [path, m] : user_modules(model)) {
    if (!seen.insert(m.get()).second) continue;
    if (auto* h = dynamic_cast<AdapterHost*>(m.get())) {
      Layer l;
      l.path = l.module_path = path;
      l.module = m;
      l.kind = h->kind();
      l.drop_in = true;
      l.host = h;
      out.push_back(std::move(l));
    } else if (std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) {
      static const auto linear = std::make_shared<const kinds::Linear>();
      out.push_back(plain_layer(path, m, linear, [](torch::nn::Module& x) -> torch::Tensor& {
        return dynamic_cast<torch::nn::LinearImpl&>(x).weight;
      }));
    } else if (const auto e = std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(m)) {
      std::optional<int64_t> pad;
      if (e->options.padding_idx()) pad = *e->options.padding_idx();
      out.push_back(plain_layer(path, m, std::make_shared<const kinds::Embedding>(pad, e->options.scale_grad_by_freq()),
                          [](torch::nn::Module& x) -> torch::Tensor& {
                            return dynamic_cast<torch::nn::EmbeddingImpl&>(x).weight;
                          }));
    } else if (add_conv_layer<1, torch::nn::Conv1dImpl>(path, m, out) ||
               add_conv_layer<2, torch::nn::Conv2dImpl>(path, m, out) ||
               add_conv_layer<3, torch::nn::Conv3dImpl>(path, m, out)) {
    } else if (const auto a = std::dynamic_pointer_cast<torch::nn::MultiheadAttentionImpl>(m)) {
      if (!a->_qkv_same_embed_dim || !a->in_proj_weight.defined()) continue;  // separate q/k/v weights: not supported
      for (const char* const* part = kinds::InProj::parts(); *part; ++part) {
        const std::string p = *part;
        out.push_back(plain_layer(path + ".in_proj" + (p.empty() ? "" : "." + p), m,
                            std::make_shared<const kinds::InProj>(p, a->options.embed_dim()),
                            [](torch::nn::Module& x) -> torch::Tensor& {
                              return dynamic_cast<torch::nn::MultiheadAttentionImpl&>(x).in_proj_weight;
                            },
                            "in_proj_weight", p));
        out.back().module_path = path;
      }
    }
  }
  return out;
}

/// The names of the layer kinds layers_of() finds, for error messages.
inline const char* supported_kinds() {
  return "Linear, Embedding, Conv1d, Conv2d, Conv3d (lora:: drop-ins or plain torch::nn layers) and "
         "torch::nn::MultiheadAttention (its in_proj, in_proj.q, in_proj.k, in_proj.v and out_proj)";
}

}  // namespace lora::detail

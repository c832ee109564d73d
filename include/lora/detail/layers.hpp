// The model's layers as inject() and the Adapters handle see them: which modules are the
// library's own, which layers can carry an adapter, and one adapted layer of either kind
// (a lora::Linear, or a plain torch::nn::Linear through its WeightParametrizationImpl).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../linear.hpp"
#include "parametrization.hpp"
#include "variants.hpp"

namespace lora::detail {

/// True for the modules and parameters the library itself registers (the holders of every
/// variant's adapter tensors, parametrizations) and everything under them.
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

/// A layer of the model that can carry adapters: a lora::Linear or a plain torch::nn::Linear
/// (exactly one of the two pointers is set). `parametrization` is set when the plain Linear
/// already has adapters.
struct Layer {
  std::string path;
  std::shared_ptr<LinearImpl> lora_linear;
  std::shared_ptr<torch::nn::LinearImpl> torch_linear;
  std::shared_ptr<WeightParametrizationImpl> parametrization;

  int64_t in_features() const {
    return lora_linear ? lora_linear->options.in_features() : torch_linear->options.in_features();
  }
  int64_t out_features() const {
    return lora_linear ? lora_linear->options.out_features() : torch_linear->options.out_features();
  }
  /// Whether the layer carries any adapter (a lora::Linear may have none yet).
  bool adapted() const { return parametrization || (lora_linear && !lora_linear->adapter_names().empty()); }

  /// Calls f(*lora_linear) or f(*parametrization): both offer the same adapter interface.
  /// Only for adapted layers.
  template <typename F>
  decltype(auto) visit(F&& f) const {
    return lora_linear ? f(*lora_linear) : f(*parametrization);
  }
  bool has_adapter(const std::string& n) const { return adapted() && visit([&](auto& l) { return l.has_adapter(n); }); }
  const Adapter& adapter(const std::string& n) const {
    return visit([&](auto& l) -> const Adapter& { return l.adapter(n); });
  }
  std::vector<std::string> adapter_names() const { return visit([](auto& l) { return l.adapter_names(); }); }
  void set_active(const std::vector<std::string>& names) const {
    visit([&](auto& l) { l.set_active_adapters(names); });
  }
  void merge(const std::string& n) const { visit([&](auto& l) { l.merge(n); }); }
  void unmerge(const std::string& n) const { visit([&](auto& l) { l.unmerge(n); }); }
  void set_enabled(bool on) const { visit([&](auto& l) { l.set_adapters_enabled(on); }); }
  void remove(const std::string& n) const { visit([&](auto& l) { l.remove_adapter(n); }); }
  /// Recomputes a plain Linear's effective weight (a no-op for lora::Linear).
  void sync() const {
    if (parametrization) parametrization->sync();
  }
  /// Adds adapter `name` (for a plain Linear, creating its parametrization on first use).
  void add(const std::string& name, const AdapterSpec& spec) {
    if (lora_linear) {
      lora_linear->add_adapter(name, spec, path);
    } else {
      parametrization = WeightParametrizationImpl::of(torch_linear, path);
      parametrization->add_adapter(name, spec);
    }
  }
};

/// Every lora::Linear and torch::nn::Linear in `model` (each module once, under its first path).
inline std::vector<Layer> layers_of(torch::nn::Module& model) {
  std::vector<Layer> out;
  std::set<const torch::nn::Module*> seen;
  for (const auto& [path, module] : user_modules(model)) {
    if (!seen.insert(module.get()).second) continue;
    Layer l;
    l.path = path;
    if ((l.lora_linear = std::dynamic_pointer_cast<LinearImpl>(module))) {
      out.push_back(std::move(l));
    } else if ((l.torch_linear = std::dynamic_pointer_cast<torch::nn::LinearImpl>(module))) {
      // find() points into the dict: keep it alive (a temporary would dangle).
      const auto children = l.torch_linear->named_children();
      if (const auto* c = children.find(WeightParametrizationImpl::kChildName))
        l.parametrization = std::dynamic_pointer_cast<WeightParametrizationImpl>(*c);
      out.push_back(std::move(l));
    }
  }
  return out;
}

}  // namespace lora::detail

// lora::inject(model, config): find the layers to adapt, give each an adapter, freeze the
// rest, and return the Adapters handle. Works on lora::Linear layers (fast path) and on plain
// torch::nn::Linear layers of any model (compatibility path, see parametrize.hpp).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "adapters.hpp"
#include "config.hpp"
#include "detail/hash.hpp"
#include "detail/match.hpp"

namespace lora {

/// A layer inject() can adapt.
struct AdaptableLayer {
  std::string path;
  std::shared_ptr<LinearImpl> fast;                  ///< set for lora::Linear
  std::shared_ptr<torch::nn::LinearImpl> plain;     ///< set for torch::nn::Linear
  int64_t in_features() const { return fast ? fast->options.in_features() : plain->options.in_features(); }
  int64_t out_features() const { return fast ? fast->options.out_features() : plain->options.out_features(); }
};

namespace detail {
/// True for the modules the library itself registers (adapter holders, parametrizations).
inline bool is_internal_path(const std::string& path) {
  for (const char* part : {"lora_A", "lora_B", AdapterBank::kMagnitude, WeightParametrizationImpl::kChildName}) {
    const std::string p = part;
    if (path == p || path.rfind(p + ".", 0) == 0 || path.find("." + p) != std::string::npos) return true;
  }
  return false;
}

/// Every module path of the model except the library's own, in registration order.
inline std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> user_modules(torch::nn::Module& model) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> out;
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false))
    if (!is_internal_path(item.key())) out.emplace_back(item.key(), item.value());
  return out;
}
}  // namespace detail

/// model.parameters() with tied tensors (one tensor under two names, e.g. GPT-2's wte and
/// lm_head) listed once: what to count, and what to give a full fine-tuning optimizer, which
/// would otherwise update a tied tensor twice per step.
inline std::vector<torch::Tensor> unique_parameters(const torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  std::set<const void*> seen;
  for (const auto& p : model.parameters())
    if (seen.insert(p.unsafeGetTensorImpl()).second) out.push_back(p);
  return out;
}

/// Every lora::Linear and torch::nn::Linear in `model` (each module once, under its first path).
inline std::vector<AdaptableLayer> adaptable_layers(torch::nn::Module& model) {
  std::vector<AdaptableLayer> out;
  std::set<const torch::nn::Module*> seen;
  for (const auto& [path, module] : detail::user_modules(model)) {
    if (!seen.insert(module.get()).second) continue;
    if (auto f = std::dynamic_pointer_cast<LinearImpl>(module)) out.push_back({path, f, nullptr});
    else if (auto p = std::dynamic_pointer_cast<torch::nn::LinearImpl>(module)) out.push_back({path, nullptr, p});
  }
  return out;
}

/// Adds the adapter described by `config` to the layers it selects, freezes every other
/// parameter (unless config.freeze_base is false), and returns the handle. Checks everything
/// before changing anything: on error the model is as it was.
inline Adapters inject(torch::nn::Module& model, const Config& config) {
  config.validate();
  const auto modules = detail::user_modules(model);
  const auto layers = adaptable_layers(model);
  std::vector<std::string> all_paths, layer_paths;
  for (const auto& m : modules) all_paths.push_back(m.first);
  for (const auto& l : layers) layer_paths.push_back(l.path);

  // Which layers: targets, minus exclude, minus output heads for "all-linear" if asked.
  std::vector<detail::Pattern> targets, excludes;
  bool all_linear = false;
  for (const auto& t : config.targets) {
    if (t == "all-linear") all_linear = true;
    else targets.emplace_back(t, "target");
  }
  for (const auto& e : config.exclude) excludes.emplace_back(e, "exclude");

  for (const auto& t : targets) {
    bool hit = false;
    for (const auto& p : layer_paths) hit |= t.matches(p);
    if (hit) continue;
    std::string other;
    for (const auto& m : modules)
      if (t.matches(m.first)) {
        other = detail::str("'", m.first, "' (", m.second->name(), ")");
        break;
      }
    if (!other.empty())
      throw TargetError(detail::str("lora::inject: target '", t.text(), "' matches ", other,
                                    ", which is not a Linear layer. LoRA adapts lora::Linear and torch::nn::Linear "
                                    "layers; target those inside it. Closest Linear layers: ",
                                    detail::quoted_list(detail::closest(t.text(), layer_paths)), "."));
    throw TargetError(detail::str("lora::inject: target '", t.text(), "' matches no layer of the model. Closest layer ",
                                  "names: ", detail::quoted_list(detail::closest(t.text(), layer_paths)),
                                  ". Targets match a full path or its trailing components (\"q_lin\", "
                                  "\"attention.q_lin\"); use \"re:<regex>\" for a regex or \"all-linear\"."));
  }
  for (const auto& e : excludes) {
    bool hit = false;
    for (const auto& p : all_paths) hit |= e.matches(p);
    if (!hit)
      throw TargetError(detail::str("lora::inject: exclude '", e.text(), "' matches no module. Closest: ",
                                    detail::quoted_list(detail::closest(e.text(), all_paths)), "."));
  }

  auto is_head = [&](const std::string& path) {
    const auto last = path.substr(path.rfind('.') == std::string::npos ? 0 : path.rfind('.') + 1);
    for (const auto& h : config.output_heads)
      if (last == h) return true;
    return false;
  };
  std::vector<const AdaptableLayer*> chosen;
  for (const auto& l : layers) {
    bool named = false;
    for (const auto& t : targets) named |= t.matches(l.path);
    bool pick = named || (all_linear && (config.adapt_output_head || !is_head(l.path)));
    for (const auto& e : excludes) pick &= !e.matches(l.path);
    if (pick) chosen.push_back(&l);
  }
  if (chosen.empty())
    throw TargetError(detail::str("lora::inject: no layer selected (", layers.size(),
                                  " Linear layers in the model: ", detail::quoted_list(layer_paths),
                                  "). Check targets and exclude."));

  // Per-layer settings, all checked before any layer changes.
  std::vector<AdapterSpec> specs;
  for (const auto* l : chosen) {
    AdapterSpec s;
    const auto* r = detail::pattern_value(config.rank_pattern, l->path, "rank_pattern");
    const auto* a = detail::pattern_value(config.alpha_pattern, l->path, "alpha_pattern");
    s.rank = r ? *r : config.rank;
    s.alpha = a ? *a : config.alpha;
    s.scale = config.scaling.scale(s.alpha, s.rank);
    s.dropout = config.dropout;
    s.init = config.init;
    s.seed = detail::layer_seed(config.seed, l->path, config.adapter_name);
    s.use_dora = config.use_dora;
    s.allow_rank_above_min = config.allow_rank_above_min;
    const auto limit = std::min(l->in_features(), l->out_features());
    if (s.rank > limit && (!s.allow_rank_above_min || s.init.changes_base))
      throw ConfigError(detail::str("lora::inject: rank ", s.rank, " is larger than layer '", l->path, "' allows (",
                                    l->out_features(), " x ", l->in_features(), ": at most ", limit,
                                    s.init.changes_base ? " with init '" + s.init.name + "'" : std::string(),
                                    "). Lower Config::rank, exclude the layer, give it a smaller rank with "
                                    "rank_pattern[\"", l->path.substr(l->path.rfind('.') + 1),
                                    "\"], or set Config::allow_rank_above_min."));
    if (!std::isfinite(s.scale))
      throw ConfigError(detail::str("lora::inject: scaling '", config.scaling.name, "' gives scale ", s.scale,
                                    " for layer '", l->path, "' (alpha ", s.alpha, ", rank ", s.rank, ")."));
    if (l->plain && s.dropout > 0)
      throw ConfigError(detail::str("lora::inject: layer '", l->path, "' is a plain torch::nn::Linear; its adapter ",
                                    "re-parametrizes the weight and never sees the input, so LoRA dropout ",
                                    s.dropout, " cannot be applied. Set Config::dropout = 0 or declare the layer "
                                    "as lora::Linear."));
    if (l->plain && s.use_dora)
      throw ConfigError(detail::str("lora::inject: layer '", l->path, "' is a plain torch::nn::Linear; its adapter ",
                                    "re-parametrizes the weight and never sees the input, so DoRA (use_dora) cannot ",
                                    "be applied. Set Config::use_dora = false or declare the layer as lora::Linear."));
    const auto* bank = l->fast ? &l->fast->adapters : nullptr;
    if (l->plain)
      if (auto* c = l->plain->named_children().find(WeightParametrizationImpl::kChildName))
        bank = &std::dynamic_pointer_cast<WeightParametrizationImpl>(*c)->adapters;
    if (bank && bank->has(config.adapter_name))
      throw ConfigError(detail::str("lora::inject: layer '", l->path, "' already has an adapter named '",
                                    config.adapter_name, "'. Set Config::adapter_name to add another adapter."));
    specs.push_back(std::move(s));
  }
  std::vector<std::pair<std::string, torch::Tensor>> kept;
  for (const auto& k : config.keep_trainable) {
    detail::Pattern pat(k, "keep_trainable");
    bool hit = false;
    for (const auto& [path, module] : modules) {
      if (!pat.matches(path)) continue;
      hit = true;
      for (const auto& p : module->named_parameters(/*recurse=*/true))
        if (!detail::is_internal_path(p.key())) kept.emplace_back(path + "." + p.key(), p.value());
    }
    if (!hit)
      throw TargetError(detail::str("lora::inject: keep_trainable '", k, "' matches no module. Closest: ",
                                    detail::quoted_list(detail::closest(k, all_paths)), "."));
  }

  // Apply.
  std::vector<detail::AdaptedLayer> adapted;
  for (size_t i = 0; i < chosen.size(); ++i) {
    const auto* l = chosen[i];
    detail::AdaptedLayer a;
    if (l->fast) {
      a.fast = l->fast;
      l->fast->add_adapter(config.adapter_name, specs[i], l->path);
    } else {
      a.compat = WeightParametrizationImpl::of(l->plain, l->path);
      a.compat->add_adapter(config.adapter_name, specs[i]);
    }
    a.info = {l->path, l->in_features(), l->out_features(), specs[i].rank, specs[i].alpha, specs[i].scale,
              l->fast ? LayerKind::lora_linear : LayerKind::torch_linear};
    adapted.push_back(std::move(a));
  }

  int64_t total = 0;
  for (auto& p : unique_parameters(model)) {
    total += p.numel();
    if (config.freeze_base) p.set_requires_grad(false);
  }
  Adapters handle(config.adapter_name, std::move(adapted), std::move(kept), total, config);
  for (auto& p : handle.parameters()) p.set_requires_grad(true);
  handle.sync();
  return handle;
}

/// Makes `names` the active adapters of every adapted layer of `model`, in that order (each
/// layer gets the subset of `names` it has; an empty list deactivates every adapter). Several
/// adapters active at once add up (DoRA ones rescale the base output, see lora::Linear).
/// Throws ConfigError, before changing anything, for a name no layer has.
inline void set_active_adapters(torch::nn::Module& model, const std::vector<std::string>& names) {
  std::vector<detail::AdaptedLayer> layers;
  std::set<std::string> seen;
  for (const auto& l : adaptable_layers(model)) {
    detail::AdaptedLayer a;
    if (l.fast) {
      a.fast = l.fast;
    } else if (auto* c = l.plain->named_children().find(WeightParametrizationImpl::kChildName)) {
      a.compat = std::dynamic_pointer_cast<WeightParametrizationImpl>(*c);
    }
    if (!a.fast && !a.compat) continue;
    for (const auto& n : a.bank().names()) seen.insert(n);
    layers.push_back(std::move(a));
  }
  for (const auto& n : names)
    if (!seen.count(n)) {
      std::vector<std::string> have(seen.begin(), seen.end());
      throw ConfigError(detail::str("lora::set_active_adapters: no layer of the model has an adapter named '", n,
                                    "'; the model has: ", detail::quoted_list(have), "."));
    }
  for (const auto& l : layers) {
    std::vector<std::string> mine;
    for (const auto& n : names)
      if (l.bank().has(n)) mine.push_back(n);
    l.set_active(mine);
  }
}

/// inject() for a module holder (a TORCH_MODULE type such as torch::nn::Sequential).
template <typename M>
Adapters inject(torch::nn::ModuleHolder<M>& model, const Config& config) {
  return inject(*model, config);
}

}  // namespace lora

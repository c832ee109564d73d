// lora::inject(model, config): find the layers to adapt, give each an adapter, freeze the
// rest, and return the ModelAdapter handle. Works on the library's drop-in layers (lora::Linear,
// lora::Embedding, lora::Conv1d/2d/3d: the fast path, LayerKind::drop_in) and on the plain
// torch::nn layers of any model (Linear, Embedding, Conv1d/2d/3d, MultiheadAttention's in_proj:
// the compatibility path, LayerKind::reparametrized; see detail/parametrization.hpp).
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "layer_adapter.hpp"
#include "model_adapter.hpp"
#include "config.hpp"
#include "detail/hash.hpp"
#include "detail/layers.hpp"
#include "detail/match.hpp"
#include "model.hpp"

namespace lora {

/// Adds the adapter described by `config` to the layers it selects, freezes every other
/// parameter (unless config.freeze_base is false), and returns the handle. Checks everything
/// before changing anything: on error the model is as it was.
inline ModelAdapter inject(torch::nn::Module& model, const Config& config) {
  config.validate();
  const auto modules = detail::user_modules(model);
  const auto layers = detail::layers_of(model);
  std::vector<std::string> all_paths, layer_paths, attentions;
  for (const auto& m : modules) {
    all_paths.push_back(m.first);
    if (std::dynamic_pointer_cast<torch::nn::MultiheadAttentionImpl>(m.second)) attentions.push_back(m.first);
  }
  for (const auto& l : layers) layer_paths.push_back(l.path);

  // Which layers: targets, minus exclude, minus output heads for "all-linear" if asked.
  std::vector<detail::Pattern> targets, excludes;
  bool all_linear = false;
  for (const auto& t : config.targets) {
    if (t == "all-linear") all_linear = true;
    else targets.emplace_back(t, "target");
  }
  for (const auto& e : config.exclude) excludes.emplace_back(e, "exclude");

  // A target naming an attention module adapts its in_proj and its out_proj, as PEFT does.
  const auto named = [&](const detail::Pattern& t, const std::string& path) {
    if (t.matches(path)) return true;
    for (const auto& a : attentions)
      if (t.matches(a) && (path == a + ".in_proj" || path == a + ".out_proj")) return true;
    return false;
  };
  for (const auto& t : targets) {
    bool hit = false;
    for (const auto& p : layer_paths) hit |= named(t, p);
    if (hit) continue;
    std::string other;
    for (const auto& m : modules)
      if (t.matches(m.first)) {
        other = detail::str("'", m.first, "' (", m.second->name(), ")");
        break;
      }
    if (!other.empty())
      throw TargetError(detail::str("lora::inject: target '", t.text(), "' matches ", other,
                                    ", which is not a layer LoRA can adapt. LoRA adapts ", detail::supported_kinds(),
                                    "; target those inside it. Closest adaptable layers: ",
                                    detail::quoted_list(detail::closest(t.text(), layer_paths)), "."));
    throw TargetError(detail::str("lora::inject: target '", t.text(), "' matches no layer of the model. Closest layer ",
                                  "names: ", detail::quoted_list(detail::closest(t.text(), layer_paths)),
                                  ". Targets match a full path or its trailing components (\"q_lin\", "
                                  "\"attention.q_lin\", \"self_attn.in_proj.q\"); use \"re:<regex>\" for a regex or "
                                  "\"all-linear\"."));
  }
  for (const auto& e : excludes) {
    bool hit = false;
    for (const auto& p : all_paths) hit |= e.matches(p);
    for (const auto& p : layer_paths) hit |= e.matches(p);
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
  std::vector<const detail::Layer*> chosen;
  for (const auto& l : layers) {
    bool hit = false;
    for (const auto& t : targets) hit |= named(t, l.path);
    const bool linear = l.kind->name() == "Linear";
    bool pick = hit || (all_linear && linear && (config.adapt_output_head || !is_head(l.path)));
    for (const auto& e : excludes) pick &= !e.matches(l.path);
    if (pick) chosen.push_back(&l);
  }
  if (chosen.empty())
    throw TargetError(detail::str("lora::inject: no layer selected (", layers.size(),
                                  " adaptable layers in the model: ", detail::quoted_list(layer_paths),
                                  "). Check targets and exclude."));

  // A weight shared by two layers (an output layer tied to the input embedding, as GPT-2's
  // lm_head and wte) must not be adapted in one place only: the adapter would act at one of
  // them before a merge and at both after it.
  if (!config.allow_untied_weights)
    for (const auto* c : chosen)
      for (const auto& l : layers) {
        if (l.module == c->module || l.weight().unsafeGetTensorImpl() != c->weight().unsafeGetTensorImpl()) continue;
        if (std::find(chosen.begin(), chosen.end(), &l) != chosen.end()) continue;
        throw ConfigError(detail::str(
            "lora::inject: layer '", c->path, "' shares its weight with '", l.path, "' (tied weights), which is not ",
            "selected: the adapter would act on '", c->path, "' only, and after merge() on both. Exclude '", c->path,
            "', or set Config::allow_untied_weights to accept that (as PEFT does without ensure_weight_tying)."));
      }

  // Per-layer settings, all checked before any layer changes.
  std::vector<LayerAdapterSpec> specs;
  for (const auto* l : chosen) {
    LayerAdapterSpec s;
    const auto* r = detail::pattern_value(config.rank_pattern, l->path, "rank_pattern");
    const auto* a = detail::pattern_value(config.alpha_pattern, l->path, "alpha_pattern");
    s.rank = r ? *r : config.rank;
    s.alpha = a ? *a : config.alpha;
    s.scaling = config.scaling;
    s.dropout = config.dropout;
    s.init = config.init;
    s.seed = detail::layer_seed(config.seed, l->path, config.seed_name.empty() ? config.adapter_name : config.seed_name);
    s.use_dora = config.use_dora;
    s.autocast_adapter_dtype = config.autocast_adapter_dtype;
    s.allow_rank_above_min = config.allow_rank_above_min;
    l->check(s);
    if (l->has_adapter(config.adapter_name))
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
  std::vector<detail::Layer> adapted;
  std::vector<LayerInfo> infos;
  for (size_t i = 0; i < chosen.size(); ++i) {
    detail::Layer l = *chosen[i];
    l.add(config.adapter_name, specs[i]);
    infos.push_back({l.path, l.in_features(), l.out_features(), specs[i].rank, specs[i].alpha, specs[i].scale(),
                     l.drop_in ? LayerKind::drop_in : LayerKind::reparametrized, l.kind->name()});
    adapted.push_back(std::move(l));
  }

  int64_t total = 0;
  for (auto& p : unique_parameters(model)) {
    total += p.numel();
    if (config.freeze_base) p.set_requires_grad(false);
  }
  auto handle = detail::ModelAdapterAccess::make(config.adapter_name, std::move(adapted), std::move(infos),
                                                 std::move(kept), total, config);
  for (auto& p : handle.parameters()) p.set_requires_grad(true);
  handle.sync();
  return handle;
}

/// inject() for a module holder (a TORCH_MODULE type such as torch::nn::Sequential).
template <typename M>
ModelAdapter inject(torch::nn::ModuleHolder<M>& model, const Config& config) {
  return inject(*model, config);
}

}  // namespace lora

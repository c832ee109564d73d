// Whole-model functions beside inject(): the parameters to count or to give a full
// fine-tuning optimizer (unique_parameters, unique_named_parameters), which adapters are active on every layer
// (set_active_adapters), and the model's weights with the adapters merged in, for export
// (merged_state_dict).
#pragma once

#include <torch/nn/module.h>
#include <torch/ordered_dict.h>

#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "detail/layers.hpp"
#include "detail/match.hpp"
#include "error.hpp"

namespace lora {

/// model.named_parameters() with tied tensors (one tensor under two names, e.g. GPT-2's wte
/// and lm_head) listed once, under their first name, in model order.
inline std::vector<std::pair<std::string, torch::Tensor>> unique_named_parameters(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::set<const void*> seen;
  for (const auto& p : model.named_parameters(/*recurse=*/true))
    if (seen.insert(p.value().unsafeGetTensorImpl()).second) out.emplace_back(p.key(), p.value());
  return out;
}

/// model.parameters() with tied tensors listed once (unique_named_parameters): what to count,
/// and what to give a full fine-tuning optimizer, which would otherwise update a tied tensor
/// twice per step.
inline std::vector<torch::Tensor> unique_parameters(const torch::nn::Module& model) {
  std::vector<torch::Tensor> out;
  for (auto& [name, p] : unique_named_parameters(model)) out.push_back(std::move(p));
  return out;
}

/// Makes `names` the active adapters of every adapted layer of `model`, in that order (each
/// layer gets the subset of `names` it has; an empty list deactivates every adapter). Several
/// adapters active at once add up (DoRA ones rescale the base output, see lora::Linear).
/// Throws ConfigError, before changing anything, for a name no layer has.
inline void set_active_adapters(torch::nn::Module& model, const std::vector<std::string>& names) {
  std::vector<detail::Layer> layers;
  std::set<std::string> seen;
  for (auto& l : detail::layers_of(model)) {
    if (!l.adapted()) continue;
    for (const auto& n : l.adapter_names()) seen.insert(n);
    layers.push_back(std::move(l));
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
      if (l.has_adapter(n)) mine.push_back(n);
    l.set_active(mine);
  }
}

/// The model's own parameters as a plain model of the same architecture has them: every
/// parameter by path, in named_parameters() order, except the adapters' tensors (lora_A,
/// lora_B, DoRA magnitudes); each adapted layer's "<path>.weight" is the weight its forward()
/// uses, with the active, unmerged adapters merged in (LoRA: W + s B A; DoRA:
/// (m / ||W + s B A||_row) (W + s B A)). Merged weights are new tensors; every other entry is
/// the parameter itself, detached (a tied tensor appears under each of its names, sharing
/// storage). The model does not change. Save it to give the adapted model to code that knows
/// no LoRA (e.g. HF transformers' from_pretrained).
inline torch::OrderedDict<std::string, torch::Tensor> merged_state_dict(torch::nn::Module& model) {
  std::map<std::string, torch::Tensor> merged;  // "<module>.<weight parameter>" -> merged weight
  for (const auto& l : detail::layers_of(model)) {
    const auto key = l.module_path + "." + l.param;
    if (l.drop_in) {
      if (l.has_pending_adapters()) merged[key] = l.merged_weight();
    } else if (const auto p = detail::WeightParametrizationImpl::find(*l.module); p && p->has_pending_adapters()) {
      merged[key] = p->merged_weight();  // every part of the weight (an attention's q, k, v) at once
    }
  }
  torch::OrderedDict<std::string, torch::Tensor> out;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) {
    if (detail::is_internal_path(p.key())) continue;
    const auto m = merged.find(p.key());
    out.insert(p.key(), m != merged.end() ? m->second : p.value().detach());
  }
  return out;
}

}  // namespace lora

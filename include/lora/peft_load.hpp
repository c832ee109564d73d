// Loading a Hugging Face PEFT LoRA adapter folder into a model: load() checks the whole folder
// against the model before it changes anything: unknown modules (TargetError), shapes and ranks
// (ShapeError), options this library cannot reproduce (ConfigError), unreadable files
// (FileError). Then it creates the adapter with inject() and copies the tensors.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "model_adapter.hpp"
#include "config.hpp"
#include "detail/layers.hpp"
#include "detail/match.hpp"
#include "detail/peft_layout.hpp"
#include "detail/peft_load_steps.hpp"
#include "detail/variant_registry.hpp"
#include "error.hpp"
#include "inject.hpp"
#include "peft_config.hpp"
#include "safetensors.hpp"
#include "scaling.hpp"

namespace lora::peft {

/// How load() creates the adapter.
struct LoadOptions {
  HfMapping mapping;
  std::string adapter_name = "default";  ///< the name the adapter gets on the model
  bool freeze_base = true;               ///< as Config::freeze_base
  bool autocast_adapter_dtype = true;    ///< as Config::autocast_adapter_dtype (float32 on a half base)
};

/// Reads a PEFT adapter folder and adds it to `model` (as inject() would, with the file's
/// config), then copies its tensors. Everything is checked first; on error the model is
/// unchanged. Returns the handle of the new adapter (named options.adapter_name).
inline ModelAdapter load(torch::nn::Module& model, const std::string& dir, const LoadOptions& options = {}) {
  using detail::str;
  namespace fs = std::filesystem;
  const auto config_path = (fs::path(dir) / kConfigFile).string();
  const auto weights_path = (fs::path(dir) / kWeightsFile).string();
  if (!fs::is_regular_file(weights_path)) {
    std::string hint = fs::is_regular_file(fs::path(dir) / "adapter_model.bin")
                           ? " It holds adapter_model.bin (a pickle), which is not read: save with "
                             "safe_serialization=True (PEFT's default)."
                           : "";
    throw FileError(str("PEFT adapter folder '", dir, "' lacks ", kWeightsFile, ".", hint));
  }
  const AdapterConfig pc = read_config(config_path);
  const safetensors::File file(weights_path);

  // The model, in HF paths.
  const auto to_ours = detail::hf_to_ours(model, options.mapping);
  const auto layers = lora::detail::layers_of(model);
  const auto index = detail::peft_layer_index(layers, options.mapping);
  const auto& layer_by_hf = index.by_hf;
  const auto& hf_layer_paths = index.hf_paths;

  // modules_to_save: PEFT wraps every module whose path ends with one of the names.
  std::map<std::string, std::shared_ptr<torch::nn::Module>> kept;  // HF module path -> module
  if (pc.modules_to_save) {
    for (const auto& m : lora::detail::user_modules(model)) {
      const auto hf = options.mapping.hf_path(m.first);
      bool match = false;
      for (const auto& n : *pc.modules_to_save) match |= !n.empty() && detail::ends_with(hf, n);
      if (!match) continue;
      bool covered = false;  // inside a module already kept
      for (const auto& k : kept) covered |= detail::starts_with(hf, k.first + ".");
      if (!covered) kept.emplace(hf, m.second);
    }
  }

  // Sort the file's tensors.
  auto [per_layer, kept_keys, strays] = detail::sort_tensors(file, kept, weights_path);
  // Modules the model lacks first: the likeliest mistake (another model, another mapping).
  for (const auto& kv : per_layer) {
    const auto& hf = kv.first;
    if (layer_by_hf.count(hf)) continue;
    const auto known = to_ours.count(hf) ? str(" ('", hf, "' is a module of the model, but not a layer LoRA can adapt: ",
                                               lora::detail::supported_kinds(), ")") : "";
    throw TargetError(str("PEFT adapter '", dir, "' adapts module '", hf, "', which the model lacks", known,
                          ". Closest adaptable layers: ", lora::detail::quoted_list(lora::detail::closest(hf, hf_layer_paths)),
                          ". The adapter is for another model, or the HfMapping does not fit this model."));
  }
  for (const auto& key : strays) {
    const bool lora_part = key.find("lora_") != std::string::npos;
    throw TargetError(str("PEFT adapter file '", weights_path, "': tensor '", key, "' ",
                          lora_part ? "is a kind of LoRA tensor this library does not load (lora_A/lora_B weights, "
                                      "lora_embedding_A/B and DoRA magnitudes of Linear layers; no adapter names in "
                                      "keys)"
                                    : "belongs to no module of modules_to_save of the model",
                          ". Check that the adapter was trained on this model."));
  }

  // Each adapted layer: known, complete, with consistent shapes and ranks.
  Config cfg;
  cfg.rank = pc.r;
  cfg.alpha = pc.lora_alpha;
  cfg.dropout = pc.lora_dropout;
  cfg.use_dora = pc.use_dora;
  cfg.autocast_adapter_dtype = options.autocast_adapter_dtype;
  cfg.scaling = pc.use_rslora ? scaling::alpha_over_sqrt_rank() : scaling::alpha_over_rank();
  cfg.init = detail::init_from_peft(pc.init_lora_weights, config_path);
  cfg.adapter_name = options.adapter_name;
  cfg.freeze_base = options.freeze_base;
  cfg.allow_rank_above_min = true;  // PEFT allows r > min(in, out); the shapes are checked below
  cfg.targets.clear();
  const auto& variant = lora::detail::variant_for(pc.use_dora);
  torch::OrderedDict<std::string, torch::Tensor> state;
  for (const auto& [hf, keys] : per_layer) {
    const lora::detail::Layer& l = *layer_by_hf.at(hf);
    const auto names = l.kind->names();
    const auto A = keys.of(names.a_holder), B = keys.of(names.b_holder);
    if (A.empty() || B.empty())
      throw FileError(str("PEFT adapter file '", weights_path, "' has no ", A.empty() ? names.a_holder : names.b_holder,
                          " tensor for layer '", hf, "' (", l.kind->name(), "; it has ",
                          keys.by_holder.empty() ? std::string("none") : keys.by_holder.begin()->second, ")."));
    // The tensors of the configured variant (DoRA's magnitude), and no other variant's.
    for (const auto& t : variant.extra_tensors())
      if (keys.of(t.holder).empty())
        throw FileError(str("PEFT adapter '", dir, "' has ", variant.option(), " true but no ", t.holder,
                            " for layer '", hf, "'."));
    for (const auto& [holder, key] : keys.by_holder)
      if (const auto* owner = lora::detail::variant_with(holder); owner && owner != &variant)
        throw ConfigError(str("PEFT adapter '", dir, "' holds a ", holder, " tensor for layer '", hf,
                              "', which only ", owner->option(), " adapters have, but adapter_config.json says ",
                              owner->option(), " false. Fix ", owner->option(), "."));
    for (const auto& kv : keys.by_holder) detail::check_dtype(file, kv.second, weights_path);
    const auto& a = file.info(A).shape;
    const auto& b = file.info(B).shape;
    const int64_t in = l.in_features(), out = l.out_features();
    const int64_t r_file = a.empty() ? 0 : a[0];
    const auto a_want = l.kind->a_shape(r_file, in), b_want = l.kind->b_shape(out, r_file);
    if (a != a_want || b != b_want)
      throw ShapeError(str("PEFT adapter '", dir, "': layer '", hf, "' (", l.kind->name(), ") has ", names.a_holder, " ",
                           detail::shape_str(a), " and ", names.b_holder, " ", detail::shape_str(b), ", but for rank ",
                           r_file, " the model's layer needs ", detail::shape_str(a_want), " and ",
                           detail::shape_str(b_want),
                           ". The adapter was trained on another model or model size (or another kernel)."));
    for (const auto& t : variant.extra_tensors()) {
      const auto& shape = file.info(keys.of(t.holder)).shape;
      if (shape != t.shape(out, in, r_file))
        throw ShapeError(str("PEFT adapter '", dir, "': the ", t.holder, " tensor of layer '", hf, "' has shape ",
                             detail::shape_str(shape), "; expected ", detail::shape_str(t.shape(out, in, r_file)),
                             ". The adapter was trained on another model or model size."));
    }
    const auto* rp = detail::pattern_value(pc.rank_pattern, hf, "rank_pattern");
    const auto* ap = detail::pattern_value(pc.alpha_pattern, hf, "alpha_pattern");
    const int64_t r = rp ? *rp : pc.r;
    const double alpha = ap ? *ap : pc.lora_alpha;
    if (r != r_file)
      throw ShapeError(str("PEFT adapter '", dir, "': layer '", hf, "' has rank ", r_file,
                           " in the file but adapter_config.json gives it r = ", r,
                           rp ? " (from rank_pattern)" : " (no rank_pattern key matches it)",
                           ". The two files do not belong together."));
    cfg.targets.push_back("re:" + detail::regex_escape(l.path));
    if (r != cfg.rank) cfg.rank_pattern[detail::regex_escape(l.path)] = r;
    if (alpha != cfg.alpha) cfg.alpha_pattern[detail::regex_escape(l.path)] = alpha;
    for (const auto& t : variant.tensors(*l.kind)) state.insert(l.path + "." + t.key, file.tensor(keys.of(t.holder)));
  }

  // target_modules (and exclude_modules) must select exactly the layers in the file.
  detail::check_selection(model, options.mapping, pc, layer_by_hf, per_layer, dir, config_path);

  // The inject() patterns must give each layer exactly its (r, alpha): check before changing anything.
  for (const auto& l : layers) {
    const auto hf = options.mapping.hf_path(l.path);
    if (!per_layer.count(hf)) continue;
    const auto* rv = lora::detail::pattern_value(cfg.rank_pattern, l.path, "rank_pattern");
    const auto* av = lora::detail::pattern_value(cfg.alpha_pattern, l.path, "alpha_pattern");
    const auto* rp = detail::pattern_value(pc.rank_pattern, hf, "rank_pattern");
    const auto* ap = detail::pattern_value(pc.alpha_pattern, hf, "alpha_pattern");
    if ((rv ? *rv : cfg.rank) != (rp ? *rp : pc.r) || (av ? *av : cfg.alpha) != (ap ? *ap : pc.lora_alpha)) {
      // A layer path that ends with another's: anchor every key.
      std::map<std::string, int64_t> rank2;
      std::map<std::string, double> alpha2;
      for (const auto& kv : cfg.rank_pattern) rank2["^" + kv.first] = kv.second;
      for (const auto& kv : cfg.alpha_pattern) alpha2["^" + kv.first] = kv.second;
      cfg.rank_pattern = rank2;
      cfg.alpha_pattern = alpha2;
      break;
    }
  }

  // modules_to_save: each kept module's parameters all in the file, or none of them.
  const auto kept_copies = detail::kept_copies(file, kept, kept_keys, to_ours, dir, weights_path, cfg);

  // The compatibility path (plain torch::nn::Linear) has no LoRA dropout, which only acts in
  // training: the file's lora_dropout is kept for lora::Linear models only.
  for (const auto& kv : per_layer)
    if (!layer_by_hf.at(kv.first)->drop_in || !layer_by_hf.at(kv.first)->kind->supports_dropout()) cfg.dropout = 0;

  // Apply: inject() checks the rest (ranks against layer sizes, the adapter name) before it
  // changes anything; the copies cannot fail after it.
  ModelAdapter handle = inject(model, cfg);
  handle.load_state_dict(state, /*strict=*/true);
  torch::NoGradGuard no_grad;
  for (const auto& [path, key] : kept_copies)
    for (const auto& kv : handle.kept_parameters())
      if (kv.first == path) kv.second.copy_(file.tensor(key));
  return handle;
}

}  // namespace lora::peft

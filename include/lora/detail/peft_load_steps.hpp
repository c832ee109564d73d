// The steps of lora::peft::load() (peft_load.hpp) that check an adapter folder against the
// model: the model's layers by their PEFT paths, sorting the file's tensors, the target_modules
// selection, and modules_to_save. (peft::hot_swap uses the first two too.)
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../config.hpp"
#include "../error.hpp"
#include "../peft_config.hpp"
#include "../safetensors.hpp"
#include "layers.hpp"
#include "match.hpp"
#include "peft_layout.hpp"
#include "variant_registry.hpp"

namespace lora::detail {

/// PEFT's target / exclude rule: a list entry equal to the path or a trailing part of it, or a
/// string regex matching the whole path.
inline bool peft_selects(const std::vector<std::string>& names, const std::string& regex, const std::string& path,
                         const char* what) {
  if (!regex.empty()) return std::regex_match(path, lora::detail::compile_regex(regex, what));
  return lora::detail::suffix_match_any(names, path);
}

/// Every module path of the model (our paths) -> its HF path; throws on two paths mapped to one.
inline std::map<std::string, std::string> hf_to_ours(torch::nn::Module& model, const peft::HfMapping& mapping) {
  std::map<std::string, std::string> out;
  for (const auto& m : lora::detail::user_modules(model)) {
    const auto hf = mapping.hf_path(m.first);
    auto [it, fresh] = out.emplace(hf, m.first);
    if (!fresh && it->second != m.first)
      throw ConfigError(str("lora::peft: the HfMapping sends both '", it->second, "' and '", m.first, "' to '", hf,
                            "'; it must give each module its own HF path."));
  }
  return out;
}

/// The model's layers by the module path PEFT's keys give them (detail/peft_layout.hpp): an
/// attention's in_proj under the attention's own path, its out_proj also under
/// "<attention>.base_layer.out_proj"; q / k / v slices have none. `layers` must outlive it.
struct PeftLayerIndex {
  std::map<std::string, const Layer*> by_hf;  ///< HF path -> layer
  std::vector<std::string> hf_paths;          ///< each layer's own HF path, for suggestions
};
inline PeftLayerIndex peft_layer_index(const std::vector<Layer>& layers, const peft::HfMapping& mapping) {
  PeftLayerIndex out;
  std::set<std::string> attentions;
  for (const auto& l : layers)
    if (l.path == l.module_path + ".in_proj") attentions.insert(l.module_path);
  for (const auto& l : layers) {
    if (!attention_of(l.path).empty() && l.path != l.module_path + ".in_proj") continue;
    const auto hf = mapping.hf_path(l.path == l.module_path + ".in_proj" ? l.module_path : l.path);
    out.by_hf[hf] = &l;
    out.hf_paths.push_back(hf);
    const auto at = l.path.rfind(".out_proj");
    if (at != std::string::npos && at + 9 == l.path.size() && attentions.count(l.path.substr(0, at)))
      out.by_hf[mapping.hf_path(l.path.substr(0, at)) + ".base_layer.out_proj"] = &l;
  }
  return out;
}

/// The adapter tensors of one layer in the file: holder ("lora_A", "lora_B", a variant's
/// such as "lora_magnitude_vector") -> file key.
struct LayerKeys {
  std::map<std::string, std::string> by_holder;
  /// The file key of `holder`'s tensor; empty if the file has none.
  std::string of(const std::string& holder) const {
    const auto it = by_holder.find(holder);
    return it == by_holder.end() ? std::string() : it->second;
  }
};
/// The file's tensors sorted: per adapted layer (HF path), the parameters of kept modules
/// ("<HF module>.<param>" -> file key), and keys of neither kind.
struct SortedTensors {
  std::map<std::string, LayerKeys> per_layer;
  std::map<std::string, std::string> kept_keys;
  std::vector<std::string> strays;
};

inline SortedTensors sort_tensors(const safetensors::File& file,
                                  const std::map<std::string, std::shared_ptr<torch::nn::Module>>& kept,
                                  const std::string& weights_path) {
  SortedTensors out;
  auto& per_layer = out.per_layer;
  auto& kept_keys = out.kept_keys;
  auto& strays = out.strays;
  const std::string prefix = peft::kPrefix;
  for (const auto& t : file.tensors())
    if (!detail::starts_with(t.name, prefix))
      throw FileError(str("PEFT adapter file '", weights_path, "': tensor '", t.name, "' does not start with '",
                          prefix, "'. This is not a file written by PeftModel.save_pretrained."));
  for (const auto& t : file.tensors()) {
    const auto& key = t.name;
    const auto rest = key.substr(prefix.size());
    std::string path;
    auto layer_key = [&](const std::string& suffix) {
      if (!detail::ends_with(rest, suffix)) return false;
      path = rest.substr(0, rest.size() - suffix.size());
      return true;
    };
    // An adapter tensor is "<layer>.<key>"; "<layer>.<holder>.weight" (PEFT's older name of
    // the DoRA magnitude) is read too.
    const char* holder = nullptr;
    for (const auto& t : lora::detail::all_adapter_tensors())
      if (!holder && (layer_key(std::string(".") + t.key) || layer_key(std::string(".") + t.holder + ".weight")))
        holder = t.holder;
    if (holder) {
      if (!per_layer[path].by_holder.emplace(holder, key).second)
        throw FileError(str("PEFT adapter file '", weights_path, "' holds two ", holder, " tensors for '", path, "'."));
    } else {
      bool found = false;
      for (const auto& k : kept)
        if (detail::starts_with(rest, k.first + ".")) found = true;
      if (found)
        kept_keys[rest] = key;
      else
        strays.push_back(key);
    }
  }
  if (per_layer.empty())
    throw FileError(str("PEFT adapter file '", weights_path, "' holds no lora_A / lora_B tensors."));

  return out;
}

/// target_modules (and exclude_modules) of `pc` must select exactly the layers of `per_layer`;
/// for "all-linear" (whose output-layer rule depends on the HF class) the file decides.
inline void check_selection(torch::nn::Module& model, const peft::HfMapping& mapping, const peft::AdapterConfig& pc,
                            const std::map<std::string, const lora::detail::Layer*>& layer_by_hf,
                            const std::map<std::string, LayerKeys>& per_layer, const std::string& dir,
                            const std::string& config_path) {
  if (pc.target_modules_regex == "all-linear") return;
  for (const auto& [path, module] : lora::detail::user_modules(model)) {
    const auto hf = mapping.hf_path(path);
    if (!detail::peft_selects(pc.target_modules, pc.target_modules_regex, hf, "target_modules")) continue;
    if (detail::peft_selects(pc.exclude_modules, pc.exclude_modules_regex, hf, "exclude_modules")) continue;
    if (!layer_by_hf.count(hf)) {
      // PEFT matches list entries against every module and refuses non-Linear ones too.
      if (!pc.target_modules_regex.empty()) continue;
      throw ConfigError(str("PEFT adapter config '", config_path, "': target_modules selects '", hf,
                            "', which is not a layer LoRA can adapt in this model (", module->name(),
                            "). The adapter is for another model."));
    }
    if (!per_layer.count(hf))
      throw FileError(str("PEFT adapter '", dir, "': target_modules selects layer '", hf, "' but ", peft::kWeightsFile,
                          " has no tensors for it. The two files do not belong together."));
  }
  for (const auto& kv : per_layer) {
    // An attention's out_proj (PEFT's "<attention>.base_layer.out_proj") comes with the attention.
    const std::string wrapped = ".base_layer.out_proj";
    const auto& selected = detail::ends_with(kv.first, wrapped) ? kv.first.substr(0, kv.first.size() - wrapped.size())
                                                                : kv.first;
    if (!detail::peft_selects(pc.target_modules, pc.target_modules_regex, selected, "target_modules") ||
        detail::peft_selects(pc.exclude_modules, pc.exclude_modules_regex, selected, "exclude_modules"))
      throw ConfigError(str("PEFT adapter '", dir, "': ", peft::kWeightsFile, " has tensors for layer '", kv.first,
                            "', which target_modules ", pc.target_modules_regex.empty() ? "" : "(a regex) ",
                            "does not select. The two files do not belong together."));
  }
}

/// Adapter tensors must be floating point: ShapeError otherwise.
inline void check_dtype(const safetensors::File& file, const std::string& key, const std::string& weights_path) {
  const auto& d = file.info(key).dtype;
  if (d != "F32" && d != "F16" && d != "BF16" && d != "F64")
    throw ShapeError(str("PEFT adapter file '", weights_path, "': tensor '", key, "' has dtype ", d,
                         "; adapter tensors must be floating point."));
}

inline std::string shape_str(const std::vector<int64_t>& s) { return str(at::IntArrayRef(s)); }

/// modules_to_save: each kept module's parameters all in the file, or none of them (PEFT then
/// keeps the module's current values, as it does for missing keys). Returns (our parameter
/// path, file key) pairs, and adds each kept module to cfg.keep_trainable.
inline std::vector<std::pair<std::string, std::string>> kept_copies(
    const safetensors::File& file, const std::map<std::string, std::shared_ptr<torch::nn::Module>>& kept,
    const std::map<std::string, std::string>& kept_keys, const std::map<std::string, std::string>& to_ours,
    const std::string& dir, const std::string& weights_path, Config& cfg) {
  std::vector<std::pair<std::string, std::string>> copies;  // (our param path, file key)
  for (const auto& [hf, module] : kept) {
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& p : module->named_parameters(/*recurse=*/true))
      if (!lora::detail::is_internal_path(p.key())) params.emplace_back(p.key(), p.value());
    size_t present = 0;
    for (const auto& [name, t] : params) present += kept_keys.count(hf + "." + name);
    if (present != 0 && present != params.size())
      throw FileError(str("PEFT adapter '", dir, "': modules_to_save module '", hf, "' has ", present, " of its ",
                          params.size(), " parameters in ", peft::kWeightsFile, "; expected all of them."));
    for (const auto& [name, t] : params) {
      const auto it = kept_keys.find(hf + "." + name);
      if (it == kept_keys.end()) continue;
      check_dtype(file, it->second, weights_path);
      if (at::IntArrayRef(file.info(it->second).shape) != t.sizes())
        throw ShapeError(str("PEFT adapter '", dir, "': tensor '", it->second, "' has shape ",
                             detail::shape_str(file.info(it->second).shape), " but the model's '", hf, ".", name, "' has shape ",
                             t.sizes(), "."));
      copies.emplace_back(to_ours.at(hf) + "." + name, it->second);
    }
    cfg.keep_trainable.push_back("re:" + detail::regex_escape(to_ours.at(hf)));
  }
  for (const auto& [rest, key] : kept_keys) {
    bool used = false;
    for (const auto& kc : copies) used |= kc.second == key;
    if (!used)
      throw TargetError(str("PEFT adapter file '", weights_path, "': tensor '", key,
                            "' is no parameter of the modules_to_save modules of the model."));
  }
  return copies;
}

}  // namespace lora::detail

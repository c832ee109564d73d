// Saving an adapter as Hugging Face PEFT's save_pretrained does: the adapter_config.json
// (make_config) and the tensors of adapter_model.safetensors (make_state) that save() writes.
// Rules other than alpha / r and rsLoRA are exported as alpha / r with the lora_alpha that gives
// the same scale; per-layer ranks and alphas become rank_pattern / alpha_pattern entries.
#pragma once

#include <torch/nn/module.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "model_adapter.hpp"
#include "config.hpp"
#include "detail/match.hpp"
#include "detail/peft_layout.hpp"
#include "detail/variant_registry.hpp"
#include "error.hpp"
#include "peft_config.hpp"
#include "safetensors.hpp"

namespace lora::peft {

/// What save() writes besides what the adapter itself says.
struct SaveOptions {
  HfMapping mapping;
  std::string base_model_name_or_path;  ///< e.g. "gpt2"; "" writes null
  std::string task_type;                ///< e.g. "CAUSAL_LM", "SEQ_CLS"; "" writes null
  bool inference_mode = true;
  /// The dtype of the adapter tensors in the file (e.g. torch::kBFloat16 to halve it); unset:
  /// each tensor's own (float32 for adapters autocast on a half-precision base).
  std::optional<torch::Dtype> dtype;
};

/// The adapter_config.json that save() writes for `adapters`.
inline AdapterConfig make_config(const ModelAdapter& adapters, const SaveOptions& options = {}) {
  using detail::str;
  const Config& cfg = adapters.config();
  if (adapters.layers().empty())
    throw ConfigError(str("lora::peft::save: adapter '", adapters.name(), "' has no layer (was it removed?)."));
  const bool rslora = cfg.scaling.is_rslora;
  AdapterConfig c;
  c.r = cfg.rank;
  c.lora_alpha = detail::exported_alpha(cfg.rank, cfg.alpha, cfg.scaling.scale(cfg.alpha, cfg.rank), rslora);
  c.lora_dropout = cfg.dropout;
  c.use_rslora = rslora;
  c.use_dora = cfg.use_dora;
  c.inference_mode = options.inference_mode;
  c.base_model_name_or_path = options.base_model_name_or_path;
  c.task_type = options.task_type;
  c.init_lora_weights = nlohmann::json::parse(detail::init_to_peft(cfg.init).dump());

  std::vector<std::tuple<std::string, int64_t, double>> per_layer;  // (HF path, r, exported alpha)
  std::set<std::string> hf_paths, targets;
  bool attention = false;
  for (const auto& l : detail::peft_layers(adapters, options.mapping, rslora)) {
    if (!hf_paths.insert(l.hf_path).second)
      throw ConfigError(str("lora::peft::save: the HfMapping sends two adapted layers to '", l.hf_path, "'."));
    per_layer.emplace_back(l.hf_path, l.rank, detail::exported_alpha(l.rank, l.alpha, l.scale, rslora));
    if (!l.target.empty()) targets.insert(l.target);
    c.fan_in_fan_out |= l.conv1d;
  }
  for (const auto& l : adapters.layers()) attention |= !detail::attention_of(l.path).empty();

  // target_modules: the Config's own names when they mean the same in HF (identity mapping,
  // plain names: PEFT matches them as inject() does), else the adapted layers' full HF paths
  // (also with Config::exclude: exclude_modules exists in PEFT >= 0.14 only). An attention is
  // named by its own path (PEFT then adapts its in_proj and out_proj).
  const bool identity = !options.mapping.to_hf;
  bool plain = identity && cfg.exclude.empty() && !attention;
  for (const auto& t : cfg.targets) plain &= t != "all-linear" && !detail::starts_with(t, "re:");
  if (plain) {
    c.target_modules = cfg.targets;
  } else {
    c.target_modules.assign(targets.begin(), targets.end());
  }

  // Patterns: the user's own when they mean the same in HF (identity mapping, alpha as
  // configured, no "re:" target: those come from load(), whose keys are escaped paths; checked
  // below layer by layer); else one full-path key per layer that differs from r / lora_alpha.
  bool hint = identity && !attention;
  for (const auto& t : cfg.targets) hint &= !detail::starts_with(t, "re:");
  for (const auto& l : adapters.layers())
    hint &= detail::same_number(detail::exported_alpha(l.rank, l.alpha, l.scale, rslora), l.alpha);
  detail::make_patterns(per_layer, c.r, c.lora_alpha, hint ? &cfg.rank_pattern : nullptr,
                        hint ? &cfg.alpha_pattern : nullptr, c);

  // modules_to_save: the kept-trainable modules, by full HF path.
  if (!adapters.kept_parameters().empty()) {
    std::vector<std::string> mods;
    for (const auto& kv : adapters.kept_parameters()) {
      const auto m = options.mapping.hf_path(detail::kept_module(kv.first, cfg.keep_trainable));
      if (std::find(mods.begin(), mods.end(), m) == mods.end()) mods.push_back(m);
    }
    c.modules_to_save = mods;
  }
  return c;
}

/// The tensors save() writes: "base_model.model.<HF path>.lora_A.weight", ".lora_B.weight"
/// (Embedding: ".lora_embedding_A", ".lora_embedding_B"; an attention's in_proj under the
/// attention's path, its out_proj under "<attention>.base_layer.out_proj": detail/peft_layout.hpp),
/// a variant's own (DoRA: ".lora_magnitude_vector"), and each kept-trainable parameter under
/// "base_model.model.<HF module path>.<param>" (PEFT strips "modules_to_save.<adapter>." on save).
inline torch::OrderedDict<std::string, torch::Tensor> make_state(const ModelAdapter& adapters,
                                                                 const SaveOptions& options = {}) {
  const Config& cfg = adapters.config();
  torch::OrderedDict<std::string, torch::Tensor> out;
  for (const auto& l : detail::peft_layers(adapters, options.mapping, cfg.scaling.is_rslora))
    for (const auto& [key, t] : l.tensors)
      out.insert(std::string(kPrefix) + l.hf_path + "." + key, options.dtype ? t.detach().to(*options.dtype) : t.detach());
  for (const auto& [path, t] : adapters.kept_parameters()) {
    const auto module = detail::kept_module(path, cfg.keep_trainable);
    out.insert(std::string(kPrefix) + options.mapping.hf_path(module) + path.substr(module.size()), t.detach());
  }
  return out;
}

/// Writes `adapters` to folder `dir` (created if needed) as PEFT's save_pretrained does:
/// adapter_model.safetensors (metadata {"format": "pt"}) and adapter_config.json, each written
/// atomically. Loads in Python with PeftModel.from_pretrained(base_model, dir).
inline void save(const ModelAdapter& adapters, const std::string& dir, const SaveOptions& options = {}) {
  const auto config = make_config(adapters, options);  // checks before writing anything
  const auto state = make_state(adapters, options);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw FileError(detail::str("lora::peft::save: cannot create folder '", dir, "': ", ec.message()));
  safetensors::save((std::filesystem::path(dir) / kWeightsFile).string(), state, {{"format", "pt"}});
  write_config((std::filesystem::path(dir) / kConfigFile).string(), config);
}

}  // namespace lora::peft

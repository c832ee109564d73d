// adapter_config.json of a Hugging Face PEFT LoRA adapter: AdapterConfig (the fields this
// library reads and writes, every other field kept), read_config() with errors that name the
// file, the field and the value seen, to_json() and write_config(); and HfMapping, how this
// model's module paths read in the Hugging Face model. lora/peft.hpp saves and loads adapters.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "detail/match.hpp"
#include "detail/peft_fields.hpp"
#include "error.hpp"
#include "init.hpp"
#include "io.hpp"

namespace lora::peft {

inline constexpr const char* kConfigFile = "adapter_config.json";
inline constexpr const char* kWeightsFile = "adapter_model.safetensors";
/// What PeftModel.save_pretrained puts before every module path.
inline constexpr const char* kPrefix = "base_model.model.";

/// How this model's module paths read in the Hugging Face model the adapter is for.
struct HfMapping {
  /// Our module path -> HF module path. Empty: the same path (this project's models use HF's
  /// names, e.g. "transformer.h.0.attn.c_attn", "distilbert.transformer.layer.0.attention.q_lin").
  std::function<std::string(const std::string&)> to_hf;
  /// Layers (our paths) that are transformers' Conv1D in HF, as in Config::targets: a name
  /// matching the path or its trailing components ("c_attn", "attn.c_proj"), or "re:<regex>".
  std::vector<std::string> conv1d;

  std::string hf_path(const std::string& path) const { return to_hf ? to_hf(path) : path; }
  bool is_conv1d(const std::string& path) const {
    for (const auto& c : conv1d)
      if (lora::detail::Pattern(c, "conv1d").matches(path)) return true;
    return false;
  }
};

/// adapter_config.json: the fields this library reads and writes. Every other field of a file
/// read is kept in `extra` (and written back by write_config).
struct AdapterConfig {
  std::string peft_type = "LORA";
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0;
  /// target_modules as a list of names (PEFT matches a module path equal to a name or ending
  /// in "." + name) ...
  std::vector<std::string> target_modules;
  /// ... or as one string: a regex a whole module path must match, or "all-linear".
  std::string target_modules_regex;
  /// exclude_modules (PEFT >= 0.14), in the same two forms.
  std::vector<std::string> exclude_modules;
  std::string exclude_modules_regex;
  std::string bias = "none";
  bool use_rslora = false;
  bool use_dora = false;
  bool fan_in_fan_out = false;
  bool inference_mode = true;
  /// modules_to_save; nullopt is JSON null. PEFT matches a module whose path ends with a name.
  std::optional<std::vector<std::string>> modules_to_save;
  std::string base_model_name_or_path;  ///< "" is JSON null
  std::string task_type;                ///< "" is JSON null; e.g. "CAUSAL_LM", "SEQ_CLS"
  /// true, false, "gaussian", "pissa", "olora", ...
  nlohmann::json init_lora_weights = true;
  /// rank_pattern / alpha_pattern in file order: PEFT takes the first key K for which
  /// "(.*\.)?(K)$" matches the module path.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
};

/// Reads and checks adapter_config.json. Throws FileError for a malformed file or field, and
/// ConfigError for a valid PEFT option this library does not support (another peft_type, a
/// bias other than "none", layers_to_transform, lora_bias, trainable tokens, ...).
inline AdapterConfig read_config(const std::string& path) {
  using detail::str;
  const auto j = lora::read_json(path, "PEFT adapter config",
                                         "A PEFT adapter folder holds adapter_config.json and adapter_model.safetensors.");
  if (!j.is_object()) throw FileError(str("PEFT adapter config '", path, "' holds a JSON ", j.type_name(), ", not an object."));
  const detail::Fields f(j, path);
  AdapterConfig c;
  c.peft_type = f.text("peft_type", "");
  if (c.peft_type != "LORA")
    f.unsupported("peft_type", "this library loads LoRA adapters (peft_type \"LORA\", with use_dora for DoRA) only.");
  const auto* r = f.find("r");
  if (!r || !r->is_number_integer() || r->get<int64_t>() <= 0) f.fail("r", "a positive integer");
  c.r = r->get<int64_t>();
  c.lora_alpha = f.number("lora_alpha", 8);
  c.lora_dropout = f.number("lora_dropout", 0);
  if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) f.fail("lora_dropout", "a probability in [0, 1)");
  c.target_modules = f.names("target_modules", &c.target_modules_regex);
  if (c.target_modules.empty() && c.target_modules_regex.empty())
    f.fail("target_modules", "the modules the adapter targets (a list of names, a regex or \"all-linear\")");
  c.exclude_modules = f.names("exclude_modules", &c.exclude_modules_regex);
  c.bias = f.text("bias", "none");
  if (c.bias != "none")
    f.unsupported("bias", "the adapter also trains biases; only bias \"none\" is supported (retrain with bias=\"none\").");
  c.use_rslora = f.boolean("use_rslora", false);
  c.use_dora = f.boolean("use_dora", false);
  c.fan_in_fan_out = f.boolean("fan_in_fan_out", false);
  c.inference_mode = f.boolean("inference_mode", true);
  if (f.find("modules_to_save")) c.modules_to_save = f.names("modules_to_save", nullptr);
  c.base_model_name_or_path = f.text("base_model_name_or_path", "");
  c.task_type = f.text("task_type", "");
  if (j.contains("init_lora_weights")) c.init_lora_weights = nlohmann::json::parse(j["init_lora_weights"].dump());
  detail::init_from_peft(c.init_lora_weights, path);  // checks it
  c.rank_pattern = f.pattern<int64_t>("rank_pattern", true);
  for (const auto& kv : c.rank_pattern)
    if (kv.second <= 0) f.fail("rank_pattern", "positive ranks");
  c.alpha_pattern = f.pattern<double>("alpha_pattern", false);

  // Options that change what the adapter computes and that this library does not implement.
  if (f.find("layers_to_transform"))
    f.unsupported("layers_to_transform", "adapters restricted to some layer indices are not supported.");
  if (f.boolean("lora_bias", false)) f.unsupported("lora_bias", "a bias on lora_B is not supported.");
  if (f.boolean("use_qalora", false)) f.unsupported("use_qalora", "QA-LoRA is not supported.");
  for (const char* k : {"trainable_token_indices", "layer_replication", "alora_invocation_tokens"})
    if (f.find(k)) f.unsupported(k, "this PEFT feature is not supported.");
  if (const auto* tp = f.find("target_parameters"); tp && !(tp->is_array() && tp->empty()))
    f.unsupported("target_parameters", "LoRA on raw nn.Parameters is not supported.");

  for (const auto& [k, v] : j.items())
    if (!detail::known_fields().count(k)) c.extra[k] = v;
  return c;
}

/// adapter_config.json's content for `c`: every field of c.extra, then the fields above, keys
/// sorted as PEFT writes them (json.dumps(..., sort_keys=True)).
inline nlohmann::json to_json(const AdapterConfig& c) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : c.extra.items()) j[k] = nlohmann::json::parse(v.dump());
  j["peft_type"] = c.peft_type;
  j["r"] = c.r;
  j["lora_alpha"] = nlohmann::json::parse(detail::json_number(c.lora_alpha).dump());
  j["lora_dropout"] = c.lora_dropout;
  if (!c.target_modules_regex.empty())
    j["target_modules"] = c.target_modules_regex;
  else
    j["target_modules"] = c.target_modules;
  if (!c.exclude_modules_regex.empty())
    j["exclude_modules"] = c.exclude_modules_regex;
  else if (!c.exclude_modules.empty())
    j["exclude_modules"] = c.exclude_modules;
  j["bias"] = c.bias;
  j["use_rslora"] = c.use_rslora;
  j["use_dora"] = c.use_dora;
  j["fan_in_fan_out"] = c.fan_in_fan_out;
  j["inference_mode"] = c.inference_mode;
  j["modules_to_save"] = c.modules_to_save ? nlohmann::json(*c.modules_to_save) : nlohmann::json(nullptr);
  j["base_model_name_or_path"] =
      c.base_model_name_or_path.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.base_model_name_or_path);
  j["task_type"] = c.task_type.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.task_type);
  j["init_lora_weights"] = c.init_lora_weights;
  j["rank_pattern"] = nlohmann::json::object();
  for (const auto& [k, v] : c.rank_pattern) j["rank_pattern"][k] = v;
  j["alpha_pattern"] = nlohmann::json::object();
  for (const auto& [k, v] : c.alpha_pattern) j["alpha_pattern"][k] = nlohmann::json::parse(detail::json_number(v).dump());
  for (const char* k : {"layers_to_transform", "layers_pattern", "revision"})
    if (!j.contains(k)) j[k] = nullptr;
  return j;
}

/// Writes adapter_config.json for `c` at `path`, atomically.
inline void write_config(const std::string& path, const AdapterConfig& c) {
  lora::write_text_atomic(path, to_json(c).dump(2) + "\n", "PEFT adapter config");
}

}  // namespace lora::peft

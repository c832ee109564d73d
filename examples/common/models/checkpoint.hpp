// Loading Hugging Face Hub checkpoints (config.json + model.safetensors) into the models of
// distilbert.hpp and gpt2.hpp. Keys may carry the `distilbert.` / `transformer.` prefix or not;
// GPT-2's attn.bias / attn.masked_bias buffers are skipped; weights tied in the model
// (lm_head = wte, vocab_projector = word_embeddings) need only one copy in the file; a missing
// classification head is initialised as HF does (normal(0, initializer_range), bias 0) from a
// seed; F16 / BF16 tensors are converted to the model's dtype. Only base `weight` / `bias`
// tensors are loaded: LoRA adapters (lora_A / lora_B) are left alone.
#pragma once

#include <torch/torch.h>

#include <lora/error.hpp>
#include <lora/safetensors.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "distilbert.hpp"
#include "gpt2.hpp"
#include "hub_config.hpp"

namespace models {

/// What a load did, key by key (model names unless stated).
struct LoadReport {
  std::string file;
  std::vector<std::string> loaded;       ///< filled from the file
  std::vector<std::string> missing;      ///< absent from the file and not tied: HF's missing_keys
  std::vector<std::string> initialized;  ///< the missing keys initialised from the seed
  std::vector<std::string> unused;       ///< file keys the model has no place for: HF's unexpected_keys
  std::vector<std::string> ignored;      ///< file keys skipped on purpose (GPT-2's attention-mask buffers)
  std::vector<std::pair<std::string, std::string>> tied;  ///< (absent key, loaded key holding its tensor)

  /// A few lines for logs.
  std::string summary() const {
    std::string tied_names;
    for (const auto& [key, source] : tied) tied_names += (tied_names.empty() ? "" : ", ") + key + " = " + source;
    return examples::str("loaded ", loaded.size(), " tensors from '", file,
                             "'\n  tied: ", tied_names.empty() ? "none" : tied_names,
                             "\n  missing: ", detail::join(missing), "\n  initialised: ", detail::join(initialized),
                             "\n  unused: ", detail::join(unused), "\n  ignored buffers: ", ignored.size());
  }
};

/// How one architecture's checkpoints map onto its model.
struct CheckpointLayout {
  std::string architecture;  ///< for messages: "DistilBERT", "GPT-2"
  std::string prefix;        ///< the base model's name inside the head model: "distilbert." / "transformer."
  std::function<bool(const std::string&)> ignore;         ///< file keys to skip
  std::function<bool(const std::string&)> transposed;     ///< model keys stored (in, out) in the file
  std::function<bool(const std::string&)> initializable;  ///< model keys that may be absent and initialised

  double init_std = 0.02;  ///< std of initialised weights (config.initializer_range)
  uint64_t seed = 0;       ///< seeds the initialisation
};

namespace detail {

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
inline bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

using Params = torch::OrderedDict<std::string, torch::Tensor>;

/// The model's base tensors by name, in model order: every parameter except LoRA adapters.
inline Params base_parameters(const torch::nn::Module& model) {
  Params out;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) {
    const std::string& k = p.key();
    if (k.find("lora_A.") != std::string::npos || k.find("lora_B.") != std::string::npos) continue;
    out.insert(k, p.value());
  }
  return out;
}

/// The model key that file key `key` fills, or "" if none: the key itself, with the prefix
/// added, or with it removed.
inline std::string model_key(const std::string& key, const Params& params, const std::string& prefix) {
  if (params.contains(key)) return key;
  if (params.contains(prefix + key)) return prefix + key;
  if (starts_with(key, prefix) && params.contains(key.substr(prefix.size()))) return key.substr(prefix.size());
  return "";
}

/// The first few names of `names`, for messages.
inline std::string some(const std::vector<std::string>& names, size_t n = 6) {
  std::vector<std::string> head(names.begin(), names.begin() + std::min(n, names.size()));
  return join(head) + (names.size() > n ? str(", ... (", names.size(), " in all)") : "");
}

/// Fills `t` (under NoGradGuard) as HF's _init_weights does for a Linear layer: the weight
/// normal(0, std), the bias 0. Values are drawn on the CPU in float, so they do not depend on the model's device or
/// dtype.
inline void hf_init(torch::Tensor t, double std, at::Generator& gen) {
  auto values = torch::empty(t.sizes(), torch::kFloat);
  if (t.dim() >= 2)
    values.normal_(0.0, std, gen);
  else
    values.fill_(0.0);
  t.copy_(values);
}

}  // namespace detail

/// Copies the tensors of `file` into `model` by name (see CheckpointLayout), checking everything
/// before changing anything. Throws examples::DataError on a shape mismatch (naming the key and
/// both shapes), and examples::FileError when the file does not hold this architecture or lacks
/// tensors the model needs that cannot be initialised.
inline LoadReport load_weights(torch::nn::Module& model, const lora::safetensors::File& file,
                               const CheckpointLayout& layout) {
  using examples::str;
  const auto params = detail::base_parameters(model);
  LoadReport report;
  report.file = file.path();

  // Plan: which file key fills which model key, shapes checked.
  std::vector<std::pair<std::string, std::string>> plan;  // (file key, model key)
  for (const auto& info : file.tensors()) {
    if (layout.ignore && layout.ignore(info.name)) {
      report.ignored.push_back(info.name);
      continue;
    }
    const std::string key = detail::model_key(info.name, params, layout.prefix);
    if (key.empty()) {
      report.unused.push_back(info.name);
      continue;
    }
    std::vector<int64_t> shape = info.shape;
    const bool transpose = layout.transposed && layout.transposed(key) && shape.size() == 2;
    if (transpose) std::swap(shape[0], shape[1]);
    const auto expected = params[key].sizes();
    if (at::IntArrayRef(shape) != expected)
      throw examples::DataError(str("checkpoint '", file.path(), "': tensor '", info.name, "' has shape ",
                                    at::IntArrayRef(info.shape), transpose ? " (stored as (in, out))" : "",
                                    " but the model's '", key, "' has shape ", expected,
                                    ". The checkpoint and config.json (or the requested number of labels) disagree: "
                                    "use the config.json saved with this checkpoint."));
    plan.emplace_back(info.name, key);
  }
  if (plan.empty())
    throw examples::FileError(str("checkpoint '", file.path(), "' does not hold a ", layout.architecture,
                                  " model: none of its ", file.tensors().size(), " tensors (", detail::some(report.unused),
                                  ") has a ", layout.architecture, " name such as '", params.begin()->key(),
                                  "'. Point the loader at a ", layout.architecture, " checkpoint."));

  // What the file does not fill: tied to a tensor it fills, initialisable, or an error.
  std::set<std::string> filled;
  for (const auto& entry : plan) filled.insert(entry.second);
  std::vector<std::string> lacking;
  for (const auto& item : params) {
    const std::string& key = item.key();
    if (filled.count(key)) continue;
    const auto source = std::find_if(filled.begin(), filled.end(),
                                     [&](const std::string& k) { return params[k].is_same(item.value()); });
    if (source != filled.end())
      report.tied.emplace_back(key, *source);
    else if (layout.initializable && layout.initializable(key))
      report.missing.push_back(key);
    else
      lacking.push_back(key);
  }
  if (!lacking.empty())
    throw examples::FileError(str("checkpoint '", file.path(), "' lacks ", lacking.size(), " tensors the ",
                                  layout.architecture, " model needs: ", detail::some(lacking),
                                  ". Check that config.json (n_layers, ...) belongs to this checkpoint."));

  // Copy, then initialise what is missing.
  torch::NoGradGuard no_grad;
  for (const auto& [name, key] : plan) {
    auto t = file.tensor(name);
    if (layout.transposed && layout.transposed(key) && t.dim() == 2) t = t.t();
    params[key].copy_(t);
    report.loaded.push_back(key);
  }
  auto gen = at::detail::createCPUGenerator(layout.seed);
  for (const auto& key : report.missing) detail::hf_init(params[key], layout.init_std, gen);
  report.initialized = report.missing;
  return report;
}

/// DistilBERT: keys with or without "distilbert."; a missing pre_classifier / classifier is
/// initialised from `seed`.
inline CheckpointLayout distilbert_layout(const DistilBertConfig& c, uint64_t seed) {
  CheckpointLayout l;
  l.architecture = "DistilBERT";
  l.prefix = "distilbert.";
  l.initializable = [](const std::string& key) {
    return detail::starts_with(key, "pre_classifier.") || detail::starts_with(key, "classifier.");
  };
  l.init_std = c.initializer_range;
  l.seed = seed;
  return l;
}

/// GPT-2: keys with or without "transformer."; attn.bias / attn.masked_bias buffers skipped;
/// Conv1D weights (c_attn, c_proj, c_fc) transposed.
inline CheckpointLayout gpt2_layout() {
  CheckpointLayout l;
  l.architecture = "GPT-2";
  l.prefix = "transformer.";
  l.ignore = [](const std::string& key) {
    return detail::ends_with(key, ".attn.bias") || detail::ends_with(key, ".attn.masked_bias");
  };
  l.transposed = [](const std::string& key) {
    return detail::ends_with(key, ".c_attn.weight") || detail::ends_with(key, ".c_proj.weight") ||
           detail::ends_with(key, ".c_fc.weight");
  };
  return l;
}

namespace detail {

/// A config.json size that a checkpoint tensor fixes: dimension `dim` of the first of `keys`
/// the file holds must equal `value`.
struct SizeCheck {
  const char* field;
  int64_t value;
  std::vector<std::string> keys;
  size_t dim;
};

/// Checks config.json's sizes against the shapes in the checkpoint's header (the header only:
/// no tensor data is read) before a model is built, so that a config whose sizes are wrong or
/// absurd ("dim": 1000000000000) stops with a HubConfigError naming the file, the field, the
/// value and the fix, instead of an allocation failure deep inside LibTorch. Tensors the file
/// lacks are not checked here (load_weights() names them). `layer_field` / `layer_prefixes`:
/// the config's layer count must not exceed the layers the file holds ("<prefix><i>." keys).
inline void check_config_sizes(const std::string& config_path, const lora::safetensors::File& file,
                               const std::vector<SizeCheck>& checks, const char* layer_field, int64_t layers,
                               const std::vector<std::string>& layer_prefixes) {
  for (const auto& c : checks)
    for (const auto& key : c.keys) {
      if (!file.contains(key)) continue;
      const auto& shape = file.info(key).shape;
      if (shape.size() > c.dim && shape[c.dim] != c.value)
        throw HubConfigError(str("config file '", config_path, "': field \"", c.field, "\" is ", c.value,
                                 " but the checkpoint '", file.path(), "' holds '", key, "' of shape ",
                                 at::IntArrayRef(shape), ", which means ", c.field, " = ", shape[c.dim],
                                 ". Use the config.json saved with this checkpoint (or set \"", c.field, "\": ",
                                 shape[c.dim], ")."));
      break;
    }
  int64_t held = 0;  // 1 + the largest layer index in the file
  for (const auto& info : file.tensors())
    for (const auto& prefix : layer_prefixes) {
      if (!starts_with(info.name, prefix)) continue;
      const auto rest = info.name.substr(prefix.size());
      const auto dot = rest.find('.');
      if (dot == 0 || dot == std::string::npos || dot > 9 ||
          rest.find_first_not_of("0123456789") != dot)
        continue;
      held = std::max<int64_t>(held, std::stoll(rest.substr(0, dot)) + 1);
    }
  if (held > 0 && layers > held)
    throw HubConfigError(str("config file '", config_path, "': field \"", layer_field, "\" is ", layers,
                             " but the checkpoint '", file.path(), "' holds ", held, " layers. Use the config.json "
                             "saved with this checkpoint (or set \"", layer_field, "\": ", held, ")."));
}

/// DistilBERT's sizes against its checkpoint (keys with or without "distilbert.").
inline void check_distilbert_sizes(const DistilBertConfig& c, const lora::safetensors::File& file) {
  const auto both = [](const std::string& k) { return std::vector<std::string>{"distilbert." + k, k}; };
  check_config_sizes(c.path, file,
                     {{"vocab_size", c.vocab_size, both("embeddings.word_embeddings.weight"), 0},
                      {"dim", c.dim, both("embeddings.word_embeddings.weight"), 1},
                      {"max_position_embeddings", c.max_position_embeddings,
                       both("embeddings.position_embeddings.weight"), 0},
                      {"dim", c.dim, both("embeddings.position_embeddings.weight"), 1},
                      {"hidden_dim", c.hidden_dim, both("transformer.layer.0.ffn.lin1.weight"), 0},
                      {"dim", c.dim, both("transformer.layer.0.ffn.lin1.weight"), 1}},
                     "n_layers", c.n_layers, both("transformer.layer."));
}

/// GPT-2's sizes against its checkpoint (keys with or without "transformer."; Conv1D weights
/// are stored (in, out)).
inline void check_gpt2_sizes(const GPT2Config& c, const lora::safetensors::File& file) {
  const auto both = [](const std::string& k) { return std::vector<std::string>{"transformer." + k, k}; };
  check_config_sizes(c.path, file,
                     {{"vocab_size", c.vocab_size, both("wte.weight"), 0},
                      {"n_embd", c.n_embd, both("wte.weight"), 1},
                      {"n_positions", c.n_positions, both("wpe.weight"), 0},
                      {"n_embd", c.n_embd, both("wpe.weight"), 1},
                      {"n_embd", c.n_embd, both("h.0.mlp.c_fc.weight"), 0},
                      {"n_inner", c.n_inner, both("h.0.mlp.c_fc.weight"), 1}},
                     "n_layer", c.n_layer, both("h."));
}

}  // namespace detail

/// A model loaded from a folder, its config and what the load did.
template <typename Model, typename Config>
struct Loaded {
  Model model;
  Config config;
  LoadReport report;
};

namespace detail {

/// dir/config.json and dir/model.safetensors; throws examples::FileError naming each one missing.
inline std::pair<std::string, std::string> checkpoint_files(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path config = fs::path(dir) / "config.json", weights = fs::path(dir) / "model.safetensors";
  std::vector<std::string> absent;
  for (const auto& p : {config, weights})
    if (!fs::is_regular_file(p)) absent.push_back(p.string());
  if (!absent.empty())
    throw examples::FileError(str("checkpoint folder '", dir, "' lacks ", join(absent),
                                  ". Download both config.json and model.safetensors of the model from the Hugging Face "
                                  "Hub into that folder (pytorch_model.bin is not read)."));
  return {config.string(), weights.string()};
}

}  // namespace detail

/// DistilBertForSequenceClassification from a Hub folder (e.g. distilbert-base-uncased): a head
/// the checkpoint lacks is initialised from `seed`. `num_labels` 0 keeps config.json's.
inline Loaded<DistilBertForSequenceClassification, DistilBertConfig> load_distilbert(const std::string& dir,
                                                                                     int64_t num_labels = 0,
                                                                                     uint64_t seed = 0) {
  const auto [config_path, weights_path] = detail::checkpoint_files(dir);
  auto config = read_distilbert_config(config_path);
  require_distilbert(config);
  if (num_labels > 0) config.num_labels = num_labels;
  const lora::safetensors::File weights(weights_path);
  detail::check_distilbert_sizes(config, weights);  // before allocating anything
  DistilBertForSequenceClassification model(config);
  auto report = load_weights(*model, weights, distilbert_layout(config, seed));
  return {model, config, report};
}

/// DistilBertForMaskedLM from a Hub folder; the checkpoint must hold the MLM head.
inline Loaded<DistilBertForMaskedLM, DistilBertConfig> load_distilbert_mlm(const std::string& dir) {
  const auto [config_path, weights_path] = detail::checkpoint_files(dir);
  const auto config = read_distilbert_config(config_path);
  require_distilbert(config);
  const lora::safetensors::File weights(weights_path);
  detail::check_distilbert_sizes(config, weights);
  DistilBertForMaskedLM model(config);
  auto report = load_weights(*model, weights, distilbert_layout(config, 0));
  return {model, config, report};
}

/// GPT2LMHeadModel from a Hub folder (gpt2, distilgpt2).
inline Loaded<GPT2LMHeadModel, GPT2Config> load_gpt2(const std::string& dir) {
  const auto [config_path, weights_path] = detail::checkpoint_files(dir);
  const auto config = read_gpt2_config(config_path);
  require_gpt2(config);
  const lora::safetensors::File weights(weights_path);
  detail::check_gpt2_sizes(config, weights);
  GPT2LMHeadModel model(config);
  auto report = load_weights(*model, weights, gpt2_layout());
  return {model, config, report};
}

}  // namespace models

// Loading a safetensors checkpoint into a module by name, whatever the model: load_weights
// copies each file tensor into the parameter of the same name, as a CheckpointLayout maps
// them (the base model's prefix present or not, file keys to skip, weights stored (in, out));
// weights tied in the model need only one copy in the file; tensors the layout allows to be
// absent are initialised as HF does (normal(0, initializer_range), bias 0) from a seed;
// F16 / BF16 tensors are converted to the model's dtype. Only base `weight` / `bias` tensors
// are loaded: LoRA adapters (lora_A / lora_B) are left alone. LoadReport says what was done.
#pragma once

#include <torch/torch.h>

#include <lora/safetensors.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "names.hpp"

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

}  // namespace models

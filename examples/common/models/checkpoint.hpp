// Loading Hugging Face Hub checkpoints (config.json + model.safetensors) into the models of
// distilbert.hpp and gpt2.hpp: load_distilbert, load_distilbert_mlm and load_gpt2, and how each
// architecture's keys map onto its model (distilbert_layout, gpt2_layout). Keys may carry the
// `distilbert.` / `transformer.` prefix or not; GPT-2's attn.bias / attn.masked_bias buffers
// are skipped; weights tied in the model (lm_head = wte, vocab_projector = word_embeddings)
// need only one copy in the file; a missing classification head is initialised as HF does
// from a seed. Each entry point reads config.json (hub_config.hpp), checks its sizes against
// the checkpoint (size_checks.hpp), builds the model, then copies the tensors in
// (load_weights.hpp).
#pragma once

#include <torch/torch.h>

#include <lora/error.hpp>
#include <lora/safetensors.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "distilbert.hpp"
#include "gpt2.hpp"
#include "hub_config.hpp"
#include "load_weights.hpp"
#include "names.hpp"
#include "size_checks.hpp"

namespace models {

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

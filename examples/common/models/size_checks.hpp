// Checks config.json's sizes against the shapes a checkpoint holds, before a model is built:
// detail::check_config_sizes, and what it checks for DistilBERT (check_distilbert_sizes) and
// GPT-2 (check_gpt2_sizes). A wrong or absurd size stops with a HubConfigError naming the
// file, the field, the value and the fix, not an allocation failure deep inside LibTorch.
#pragma once

#include <torch/torch.h>

#include <lora/safetensors.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "config_reader.hpp"
#include "hub_config.hpp"
#include "names.hpp"

namespace models {

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

}  // namespace models

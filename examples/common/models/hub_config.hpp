// Hugging Face `config.json` for DistilBERT and GPT-2: HF's field names, and HF's defaults
// (DistilBertConfig, GPT2Config) for fields that are absent or null; the file itself is read
// by config_reader.hpp. What both models share (the activations configs name, the attention
// mask value and the input checks) is in layers.hpp.
#pragma once

#include <lora/error.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "../errors.hpp"
#include "config_reader.hpp"
#include "layers.hpp"
#include "names.hpp"

namespace models {

/// HF's `DistilBertConfig`.
struct DistilBertConfig {
  std::string path;        ///< the file read, for messages
  std::string model_type;  ///< "distilbert" for a DistilBERT checkpoint
  std::vector<std::string> architectures;
  int64_t vocab_size = 30522;
  int64_t max_position_embeddings = 512;
  bool sinusoidal_pos_embds = false;
  int64_t n_layers = 6;
  int64_t n_heads = 12;
  int64_t dim = 768;
  int64_t hidden_dim = 3072;
  double dropout = 0.1;
  double attention_dropout = 0.1;
  Activation activation = Activation::gelu;
  double initializer_range = 0.02;
  double qa_dropout = 0.1;
  double seq_classif_dropout = 0.2;
  int64_t pad_token_id = 0;
  int64_t num_labels = 2;  ///< the size of id2label when present
};

/// HF's `GPT2Config`.
struct GPT2Config {
  std::string path;
  std::string model_type;  ///< "gpt2" for GPT-2 and distilgpt2
  std::vector<std::string> architectures;
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_inner = 3072;  ///< null or absent: 4 * n_embd
  Activation activation_function = Activation::gelu_tanh;  ///< "gelu_new"
  double resid_pdrop = 0.1;
  double embd_pdrop = 0.1;
  double attn_pdrop = 0.1;
  double layer_norm_epsilon = 1e-5;
  double initializer_range = 0.02;
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  bool tie_word_embeddings = true;
  int64_t bos_token_id = 50256;
  int64_t eos_token_id = 50256;
};

namespace detail {

/// Throws unless the config is of `model_type` (or, without a model_type, unless every listed
/// architecture starts with `class_prefix`).
inline void require_model_type(const std::string& path, const std::string& seen_type,
                               const std::vector<std::string>& architectures, const std::string& model_type,
                               const std::string& class_prefix, const std::string& what) {
  bool ok = seen_type == model_type;
  if (seen_type.empty()) {
    ok = true;
    for (const auto& a : architectures) ok = ok && a.rfind(class_prefix, 0) == 0;
  }
  if (!ok)
    throw HubConfigError(str("config file '", path, "': model_type is \"", seen_type,
                             "\" (architectures: ", join(architectures), "), not \"", model_type,
                             "\". This loader reads ", what, " checkpoints only; point it at a folder holding one."));
}

}  // namespace detail

/// Reads a DistilBERT config.json. Any model_type parses (fields take HF's defaults); loaders
/// call require_distilbert() to refuse other architectures.
inline DistilBertConfig read_distilbert_config(const std::string& path) {
  const detail::ConfigReader r(path);
  DistilBertConfig c;
  c.path = path;
  c.model_type = r.text("model_type", "");
  c.architectures = r.architectures();
  c.vocab_size = r.integer("vocab_size", c.vocab_size);
  c.max_position_embeddings = r.integer("max_position_embeddings", c.max_position_embeddings);
  c.sinusoidal_pos_embds = r.boolean("sinusoidal_pos_embds", c.sinusoidal_pos_embds);
  c.n_layers = r.integer("n_layers", c.n_layers);
  c.n_heads = r.integer("n_heads", c.n_heads);
  c.dim = r.integer("dim", c.dim);
  c.hidden_dim = r.integer("hidden_dim", c.hidden_dim);
  c.dropout = r.probability("dropout", c.dropout);
  c.attention_dropout = r.probability("attention_dropout", c.attention_dropout);
  c.activation = r.activation("activation", "gelu");
  c.initializer_range = r.number("initializer_range", c.initializer_range, 0.0, 1e3);
  c.qa_dropout = r.probability("qa_dropout", c.qa_dropout);
  c.seq_classif_dropout = r.probability("seq_classif_dropout", c.seq_classif_dropout);
  c.pad_token_id = r.integer("pad_token_id", c.pad_token_id, 0);
  c.num_labels = r.num_labels();
  if (c.dim % c.n_heads != 0)
    r.fail("n_heads", nlohmann::json(c.n_heads), examples::str("a divisor of dim (", c.dim, ")"), "12");
  if (c.pad_token_id >= c.vocab_size)
    r.fail("pad_token_id", nlohmann::json(c.pad_token_id),
           examples::str("an id below vocab_size (", c.vocab_size, ")"), "0");
  return c;
}

/// Reads a GPT-2 config.json (any model_type parses; see require_gpt2()).
inline GPT2Config read_gpt2_config(const std::string& path) {
  const detail::ConfigReader r(path);
  GPT2Config c;
  c.path = path;
  c.model_type = r.text("model_type", "");
  c.architectures = r.architectures();
  c.vocab_size = r.integer("vocab_size", c.vocab_size);
  c.n_positions = r.integer("n_positions", c.n_positions);
  c.n_embd = r.integer("n_embd", c.n_embd);
  c.n_layer = r.integer("n_layer", c.n_layer);
  c.n_head = r.integer("n_head", c.n_head);
  c.n_inner = r.integer("n_inner", 4 * c.n_embd);
  c.activation_function = r.activation("activation_function", "gelu_new");
  c.resid_pdrop = r.probability("resid_pdrop", c.resid_pdrop);
  c.embd_pdrop = r.probability("embd_pdrop", c.embd_pdrop);
  c.attn_pdrop = r.probability("attn_pdrop", c.attn_pdrop);
  c.layer_norm_epsilon = r.number("layer_norm_epsilon", c.layer_norm_epsilon, 0.0, 1.0);
  c.initializer_range = r.number("initializer_range", c.initializer_range, 0.0, 1e3);
  c.scale_attn_weights = r.boolean("scale_attn_weights", c.scale_attn_weights);
  c.scale_attn_by_inverse_layer_idx = r.boolean("scale_attn_by_inverse_layer_idx", c.scale_attn_by_inverse_layer_idx);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", c.tie_word_embeddings);
  c.bos_token_id = r.integer("bos_token_id", c.bos_token_id, 0);
  c.eos_token_id = r.integer("eos_token_id", c.eos_token_id, 0);
  if (c.n_embd % c.n_head != 0)
    r.fail("n_head", nlohmann::json(c.n_head), examples::str("a divisor of n_embd (", c.n_embd, ")"), "12");
  return c;
}

/// Throws HubConfigError unless `c` describes a DistilBERT model.
inline void require_distilbert(const DistilBertConfig& c) {
  detail::require_model_type(c.path, c.model_type, c.architectures, "distilbert", "DistilBert", "DistilBERT");
}

/// Throws HubConfigError unless `c` describes a GPT-2 model.
inline void require_gpt2(const GPT2Config& c) {
  detail::require_model_type(c.path, c.model_type, c.architectures, "gpt2", "GPT2", "GPT-2");
}

}  // namespace models

// Hugging Face `config.json` for DistilBERT and GPT-2: HF's field names, and HF's defaults
// (DistilBertConfig, GPT2Config) for fields that are absent or null. Also what both models
// share: the activations configs name, the attention mask value and the input checks.
#pragma once

#include <torch/torch.h>

#include <lora/error.hpp>
#include <nlohmann/json.hpp>

#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "../errors.hpp"

namespace models {

/// A config.json that cannot be used. The message names the file, the field, the value seen
/// and what to do.
class HubConfigError : public examples::FileError {
 public:
  using FileError::FileError;
};

/// The activations HF configs name (ACT2FN keys) that these models support.
enum class Activation {
  gelu,       ///< "gelu": exact, 0.5 x (1 + erf(x / sqrt 2))
  gelu_tanh,  ///< "gelu_new", "gelu_pytorch_tanh": the tanh approximation
  relu,       ///< "relu"
};

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

/// x through `a`.
inline torch::Tensor activate(Activation a, const torch::Tensor& x) {
  switch (a) {
    case Activation::gelu:
      return torch::gelu(x);
    case Activation::gelu_tanh:
      return torch::gelu(x, "tanh");
    case Activation::relu:
      return torch::relu(x);
  }
  return x;
}

/// The most negative finite value of dtype `t` (HF's torch.finfo(dtype).min), used to mask
/// attention scores.
inline double mask_value(c10::ScalarType t) {
  switch (t) {
    case torch::kDouble:
      return std::numeric_limits<double>::lowest();
    case torch::kHalf:
      return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    case torch::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    default:
      return std::numeric_limits<float>::lowest();
  }
}

namespace detail {

using examples::str;

/// Reads the fields of one config.json; absent and null fields take the given default.
class ConfigReader {
 public:
  /// Parses the JSON file at `path`; throws examples::FileError if it cannot be read or parsed.
  explicit ConfigReader(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw examples::FileError(str("cannot open config file '", path, "'. Check the path."));
    try {
      json_ = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw examples::FileError(
          str("config file '", path, "' is not valid JSON (", e.what(), "). Download config.json again."));
    }
    if (!json_.is_object())
      throw examples::FileError(
          str("config file '", path, "' holds a JSON ", json_.type_name(), "; expected an object."));
  }

  const std::string& path() const { return path_; }

  /// The largest size or id a config may give: 2^40 (no model has a dimension near it), so that
  /// sizes multiplied together (4 * n_embd, ...) cannot overflow int64_t. Fuzzing found
  /// "n_embd": 9223372036854775807 overflowing 4 * n_embd (GPT-2's default n_inner).
  static constexpr int64_t kMaxInteger = int64_t{1} << 40;

  /// An integer in [min, kMaxInteger].
  int64_t integer(const char* field, int64_t fallback, int64_t min = 1) const {
    const auto* v = find(field);
    if (!v) return fallback;
    const bool ok = v->is_number_unsigned() ? v->get<uint64_t>() <= static_cast<uint64_t>(kMaxInteger)
                                              && v->get<int64_t>() >= min
                                            : v->is_number_integer() && v->get<int64_t>() >= min &&
                                                  v->get<int64_t>() <= kMaxInteger;
    if (!ok) fail(field, *v, str("an integer in [", min, ", ", kMaxInteger, "]"), str(fallback));
    return v->get<int64_t>();
  }

  /// A number in [lo, hi].
  double number(const char* field, double fallback, double lo, double hi) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_number() || !(v->get<double>() >= lo && v->get<double>() <= hi))
      fail(field, *v, str("a number in [", lo, ", ", hi, "]"), str(fallback));
    return v->get<double>();
  }

  /// A dropout probability, in [0, 1).
  double probability(const char* field, double fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_number() || !(v->get<double>() >= 0.0 && v->get<double>() < 1.0))
      fail(field, *v, "a probability in [0, 1)", str(fallback));
    return v->get<double>();
  }

  bool boolean(const char* field, bool fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(field, *v, "true or false", fallback ? "true" : "false");
    return v->get<bool>();
  }

  std::string text(const char* field, const std::string& fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_string()) fail(field, *v, "a string", "\"" + fallback + "\"");
    return v->get<std::string>();
  }

  /// The activation named by `field` (an HF ACT2FN key).
  Activation activation(const char* field, const std::string& fallback) const {
    const std::string name = text(field, fallback);
    if (name == "gelu") return Activation::gelu;
    if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::gelu_tanh;
    if (name == "relu") return Activation::relu;
    fail(field, nlohmann::json(name), "one of \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\", \"relu\"",
         "\"" + fallback + "\"");
  }

  /// "architectures": a list of class names (empty when absent).
  std::vector<std::string> architectures() const {
    const auto* v = find("architectures");
    std::vector<std::string> out;
    if (!v) return out;
    if (!v->is_array()) fail("architectures", *v, "a list of class names", "none");
    for (const auto& a : *v) {
      if (!a.is_string()) fail("architectures", *v, "a list of class names", "none");
      out.push_back(a.get<std::string>());
    }
    return out;
  }

  /// HF's num_labels: the size of "id2label" when present, else "num_labels", else 2.
  int64_t num_labels() const {
    if (const auto* v = find("id2label")) {
      if (!v->is_object() || v->empty()) fail("id2label", *v, "an object mapping label ids to names", "2 labels");
      return static_cast<int64_t>(v->size());
    }
    return integer("num_labels", 2);
  }

  [[noreturn]] void fail(const char* field, const nlohmann::json& value, const std::string& expected,
                         const std::string& fallback) const {
    std::string seen = value.dump();
    if (seen.size() > 60) seen = seen.substr(0, 57) + "...";
    throw HubConfigError(str("config file '", path_, "': field \"", field, "\" is ", seen, "; expected ", expected,
                             ". Fix the value, or remove the field to use HF's default (", fallback, ")."));
  }

 private:
  const nlohmann::json* find(const char* field) const {
    const auto it = json_.find(field);
    return it == json_.end() || it->is_null() ? nullptr : &*it;
  }

  std::string path_;
  nlohmann::json json_;
};

/// "A, B" or "none".
inline std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "none" : out;
}

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

/// Throws unless input_ids is (B, T) int64 with T <= max_len and attention_mask is undefined or (B, T).
inline void check_inputs(const torch::Tensor& input_ids, const torch::Tensor& attention_mask, int64_t max_len,
                         const char* model) {
  if (input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong)
    throw examples::DataError(str(model, ": input_ids must be a (batch, tokens) int64 tensor; got ", input_ids.sizes(),
                                  " ", input_ids.scalar_type(), "."));
  if (input_ids.size(1) > max_len)
    throw examples::DataError(str(model, ": ", input_ids.size(1), " tokens exceed the model's ", max_len,
                                  " positions. Truncate the input to at most ", max_len, " tokens."));
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes())
    throw examples::DataError(str(model, ": attention_mask has shape ", attention_mask.sizes(), " but input_ids has ",
                                  input_ids.sizes(), "; they must match."));
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

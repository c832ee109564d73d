// Exports for this project's models (distilbert.hpp, gpt2.hpp) in Hugging Face's layouts:
//  - the HfMapping that lora::peft needs to save and load their adapters as PEFT does;
//  - a merged full checkpoint: model.safetensors + config.json in the Hub layout, every active
//    adapter merged into its base weight (LoRA: W + s B A; DoRA: (m / ||W + s B A||_row)
//    (W + s B A)), which HF transformers' from_pretrained loads as a plain model, and which
//    load_gpt2 / load_distilbert (checkpoint.hpp) read back.
// The model itself is not changed: merged weights are computed on copies.
#pragma once

#include <torch/torch.h>

#include <lora/error.hpp>
#include <lora/io.hpp>
#include <lora/model.hpp>
#include <lora/peft.hpp>
#include <lora/safetensors.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "../errors.hpp"
#include "checkpoint.hpp"
#include "distilbert.hpp"
#include "gpt2.hpp"
#include "hub_config.hpp"

namespace models {

/// GPT-2's module paths are HF's (GPT2LMHeadModel: "transformer.h.0.attn.c_attn", "lm_head");
/// c_attn, attn.c_proj, c_fc and mlp.c_proj are transformers' Conv1D there (PEFT's
/// fan_in_fan_out); lm_head is an nn.Linear.
inline lora::peft::HfMapping gpt2_peft_mapping() {
  lora::peft::HfMapping m;
  m.conv1d = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
  return m;
}

/// DistilBERT's module paths are HF's ("distilbert.transformer.layer.0.attention.q_lin",
/// "pre_classifier", "classifier", "vocab_projector"); every layer is an nn.Linear.
inline lora::peft::HfMapping distilbert_peft_mapping() { return {}; }

/// What export_merged wrote.
struct ExportReport {
  std::string dir;
  std::vector<std::string> written;  ///< tensor names in model.safetensors
  std::vector<std::string> merged;   ///< the layers whose weight carries merged adapters
  bool untied = false;               ///< the output head was written on its own (tie_word_embeddings false)
};

namespace detail {

/// How one architecture's merged checkpoint is written.
struct ExportLayout {
  std::string architecture;                                ///< for messages
  std::function<bool(const std::string&)> transposed;     ///< keys HF stores (in, out) (GPT-2's Conv1D)
  bool can_untie = false;  ///< whether the model can be written with tie_word_embeddings false
};

/// The base tensors of `model` (no adapter tensors), merged, named as in HF. A tensor registered
/// under two names (a tied head) is written under its first name only (the embedding, as HF
/// does), unless merging untied the two.
inline torch::OrderedDict<std::string, torch::Tensor> merged_state(torch::nn::Module& model, const ExportLayout& layout,
                                                                   ExportReport& report) {
  using examples::str;
  const auto merged = lora::merged_state_dict(model);  // adapter tensors left out
  torch::OrderedDict<std::string, torch::Tensor> out;
  std::map<const void*, std::string> first_name;  // TensorImpl -> first parameter name
  std::set<std::string> merged_keys;              // weights that carry merged adapters
  for (const auto& p : model.named_parameters(/*recurse=*/true))
    if (const auto* t = merged.find(p.key()); t && t->data_ptr() != p.value().data_ptr()) {
      merged_keys.insert(p.key());
      report.merged.push_back(p.key().substr(0, p.key().size() - 7));
    }
  for (const auto& p : model.named_parameters(/*recurse=*/true)) {
    const std::string& k = p.key();
    if (!merged.contains(k)) continue;  // lora_A / lora_B / magnitudes
    const void* impl = p.value().unsafeGetTensorImpl();
    const bool is_merged = merged_keys.count(k) > 0;
    const auto seen = first_name.find(impl);
    if (seen != first_name.end()) {
      // A tied tensor: HF writes it once unless it no longer is one tensor.
      const bool differs = is_merged || merged_keys.count(seen->second);
      if (!differs) continue;
      if (!layout.can_untie)
        throw examples::DataError(str(layout.architecture, " merged export: '", k, "' and '", seen->second,
                                      "' are one tensor in this model, and an adapter on one of them would untie them, "
                                      "which this model cannot load back. Leave that layer out of the adapter's targets."));
      report.untied = true;
    } else {
      first_name.emplace(impl, k);
    }
    torch::Tensor t = merged[k];
    if (layout.transposed && layout.transposed(k) && t.dim() == 2) t = t.t();
    out.insert(k, t.contiguous());
  }
  for (const auto& item : out) report.written.push_back(item.key());
  return out;
}

/// The config.json the model was read from (its `path`), or an empty object.
inline nlohmann::json source_config(const std::string& path) {
  if (path.empty()) return nlohmann::json::object();
  std::ifstream in(path, std::ios::binary);
  if (!in) return nlohmann::json::object();
  try {
    auto j = nlohmann::json::parse(in);
    return j.is_object() ? j : nlohmann::json::object();
  } catch (const nlohmann::json::exception&) {
    return nlohmann::json::object();
  }
}

/// `j[field]` = the HF name of `a`, unless it already names an activation computed the same way.
inline void set_activation(nlohmann::json& j, const char* field, Activation a) {
  if (j.contains(field) && j[field].is_string()) {
    const auto s = j[field].get<std::string>();
    const bool same = (a == Activation::gelu && s == "gelu") || (a == Activation::relu && s == "relu") ||
                      (a == Activation::gelu_tanh && (s == "gelu_new" || s == "gelu_pytorch_tanh"));
    if (same) return;
  }
  j[field] = a == Activation::gelu ? "gelu" : a == Activation::relu ? "relu" : "gelu_new";
}

/// model.safetensors ({"format": "pt"}) and config.json into `dir`, each written atomically.
inline void write_checkpoint(const std::string& dir, const torch::OrderedDict<std::string, torch::Tensor>& tensors,
                             const nlohmann::json& config) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw examples::FileError(examples::str("merged export: cannot create folder '", dir, "': ", ec.message()));
  lora::safetensors::save((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  lora::write_text_atomic((fs::path(dir) / "config.json").string(), config.dump(2) + "\n", "config.json");
}

inline nlohmann::json labels_json(int64_t n, bool id_to_label) {
  nlohmann::json j = nlohmann::json::object();
  for (int64_t i = 0; i < n; ++i) {
    const auto name = "LABEL_" + std::to_string(i);
    if (id_to_label)
      j[std::to_string(i)] = name;
    else
      j[name] = i;
  }
  return j;
}

inline nlohmann::json distilbert_config_json(const DistilBertConfig& c, const std::string& architecture) {
  auto j = source_config(c.path);
  j["model_type"] = "distilbert";
  j["architectures"] = {architecture};
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["sinusoidal_pos_embds"] = c.sinusoidal_pos_embds;
  j["n_layers"] = c.n_layers;
  j["n_heads"] = c.n_heads;
  j["dim"] = c.dim;
  j["hidden_dim"] = c.hidden_dim;
  j["dropout"] = c.dropout;
  j["attention_dropout"] = c.attention_dropout;
  set_activation(j, "activation", c.activation);
  j["initializer_range"] = c.initializer_range;
  j["qa_dropout"] = c.qa_dropout;
  j["seq_classif_dropout"] = c.seq_classif_dropout;
  j["pad_token_id"] = c.pad_token_id;
  if (!j.contains("id2label") || !j["id2label"].is_object() || static_cast<int64_t>(j["id2label"].size()) != c.num_labels) {
    j["id2label"] = labels_json(c.num_labels, true);
    j["label2id"] = labels_json(c.num_labels, false);
  }
  j.erase("num_labels");
  if (!j.contains("torch_dtype")) j["torch_dtype"] = "float32";
  return j;
}

}  // namespace detail

/// GPT2LMHeadModel -> `dir`/model.safetensors + config.json as transformers saves it: keys
/// "transformer.*", Conv1D weights (c_attn, c_proj, c_fc) transposed back to (in, out), the
/// attention-mask buffers and the tied lm_head.weight left out. With an adapter on lm_head,
/// merging unties it from wte: lm_head.weight is written and config.json says
/// tie_word_embeddings false.
inline ExportReport export_merged(GPT2LMHeadModel& model, const std::string& dir) {
  ExportReport report;
  report.dir = dir;
  detail::ExportLayout layout;
  layout.architecture = "GPT-2";
  layout.transposed = gpt2_layout().transposed;
  layout.can_untie = true;
  const auto tensors = detail::merged_state(*model, layout, report);
  const GPT2Config& c = model->config;
  auto j = detail::source_config(c.path);
  j["model_type"] = "gpt2";
  j["architectures"] = {"GPT2LMHeadModel"};
  j["vocab_size"] = c.vocab_size;
  j["n_positions"] = c.n_positions;
  j["n_embd"] = c.n_embd;
  j["n_layer"] = c.n_layer;
  j["n_head"] = c.n_head;
  j["n_inner"] = c.n_inner;
  detail::set_activation(j, "activation_function", c.activation_function);
  j["resid_pdrop"] = c.resid_pdrop;
  j["embd_pdrop"] = c.embd_pdrop;
  j["attn_pdrop"] = c.attn_pdrop;
  j["layer_norm_epsilon"] = c.layer_norm_epsilon;
  j["initializer_range"] = c.initializer_range;
  j["scale_attn_weights"] = c.scale_attn_weights;
  j["scale_attn_by_inverse_layer_idx"] = c.scale_attn_by_inverse_layer_idx;
  j["tie_word_embeddings"] = c.tie_word_embeddings && !report.untied;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  if (!j.contains("torch_dtype")) j["torch_dtype"] = "float32";
  detail::write_checkpoint(dir, tensors, j);
  return report;
}

namespace detail {
/// A DistilBERT model (`M`: ...ForSequenceClassification or ...ForMaskedLM) -> `dir`, with
/// config.json's "architectures" = {architecture}.
template <typename M>
ExportReport export_distilbert(M& model, const std::string& dir, const char* architecture) {
  ExportReport report;
  report.dir = dir;
  ExportLayout layout;
  layout.architecture = "DistilBERT";
  const auto tensors = merged_state(*model, layout, report);
  write_checkpoint(dir, tensors, distilbert_config_json(model->config, architecture));
  return report;
}
}  // namespace detail

/// DistilBertForSequenceClassification -> `dir` as transformers saves it ("distilbert.*",
/// pre_classifier, classifier; id2label sized to num_labels).
inline ExportReport export_merged(DistilBertForSequenceClassification& model, const std::string& dir) {
  return detail::export_distilbert(model, dir, "DistilBertForSequenceClassification");
}

/// DistilBertForMaskedLM -> `dir` as transformers saves it (vocab_projector.weight, tied to the
/// word embeddings, left out). An adapter on vocab_projector cannot be exported merged (this
/// model always ties the two): examples::DataError.
inline ExportReport export_merged(DistilBertForMaskedLM& model, const std::string& dir) {
  return detail::export_distilbert(model, dir, "DistilBertForMaskedLM");
}

}  // namespace models

// DistilBERT (Sanh et al. 2019), ported from HF transformers' modeling_distilbert.py: the
// encoder (DistilBertModel) and the sequence-classification and masked-LM heads. Module names
// are the checkpoint keys, so a Hub state dict loads by name (models/checkpoint.hpp). Every
// projection is a lora::Linear, so LoRA targets them by their Hub names (q_lin, v_lin, ...);
// the classification model also comes with torch::nn::Linear projections
// (DistilBertForSequenceClassificationT<torch::nn::Linear>), for the compatibility path.
// The attention core and the dropout its modules call are in attention.hpp and dropout.hpp.
#pragma once

#include <torch/torch.h>

#include <lora/linear.hpp>

#include <cstdint>

#include "attention.hpp"
#include "dropout.hpp"
#include "hub_config.hpp"
#include "layers.hpp"

namespace models {

namespace detail {

/// HF's create_sinusoidal_embeddings: row p = sin / cos of p / 10000^(2 (j / 2) / dim).
inline torch::Tensor sinusoidal_positions(int64_t n_pos, int64_t dim) {
  auto pos = torch::arange(n_pos, torch::kDouble).unsqueeze(1);                  // (P, 1)
  auto j = torch::arange(dim, torch::kLong).div(2, "floor").to(torch::kDouble);  // (D)
  auto angle = pos / torch::pow(10000.0, 2.0 * j / static_cast<double>(dim));    // (P, D)
  auto out = torch::empty({n_pos, dim}, torch::kDouble);
  using torch::indexing::None;
  using torch::indexing::Slice;
  out.index_put_({Slice(), Slice(0, None, 2)}, angle.index({Slice(), Slice(0, None, 2)}).sin());
  out.index_put_({Slice(), Slice(1, None, 2)}, angle.index({Slice(), Slice(1, None, 2)}).cos());
  return out.to(torch::kFloat);
}

}  // namespace detail

/// Word + position embeddings, LayerNorm (eps 1e-12), dropout.
class DistilBertEmbeddingsImpl : public torch::nn::Module {
 public:
  /// `tied_word_weight`, when given, becomes the word embedding matrix (shared, not copied).
  explicit DistilBertEmbeddingsImpl(const DistilBertConfig& c, const torch::Tensor& tied_word_weight = {}) {
    auto word = torch::nn::EmbeddingOptions(c.vocab_size, c.dim).padding_idx(c.pad_token_id);
    if (tied_word_weight.defined()) word._weight(tied_word_weight);
    word_embeddings = register_module("word_embeddings", torch::nn::Embedding(word));
    position_embeddings = register_module(
        "position_embeddings", torch::nn::Embedding(torch::nn::EmbeddingOptions(c.max_position_embeddings, c.dim)));
    if (c.sinusoidal_pos_embds) {
      torch::NoGradGuard no_grad;
      position_embeddings->weight.copy_(detail::sinusoidal_positions(c.max_position_embeddings, c.dim));
      position_embeddings->weight.set_requires_grad(false);
    }
    layer_norm = register_module("LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim}).eps(1e-12)));
    dropout = register_module("dropout", torch::nn::Dropout(c.dropout));
  }

  /// input_ids (B, T) -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& input_ids) {
    const auto T = input_ids.size(1);
    auto pos = torch::arange(T, input_ids.options());                             // (T)
    auto x = word_embeddings(input_ids) + position_embeddings(pos).unsqueeze(0);  // (B, T, C)
    return dropout(layer_norm(x));
  }

  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr};
  torch::nn::LayerNorm layer_norm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(DistilBertEmbeddings);

// The modules with projections are templates on their `Linear` layer: lora::Linear, the
// library's own layer, in the examples' models (DistilBertModel, ...: the names without "T"), or
// torch::nn::Linear for the same model adapted through the library's compatibility path
// (bench/lora_bench times the two). XImplT<Linear> is the module, XT<Linear> its holder, and
// XImpl and X are the two with lora::Linear.

/// As TORCH_MODULE, for a module templated on its Linear layer: NameT<Linear> is the holder of
/// NameImplT<Linear>; Name and NameImpl are the lora::Linear versions that the programs use.
#define DISTILBERT_MODULE(Name)                                 \
  template <typename Linear>                                    \
  using Name##T = torch::nn::ModuleHolder<Name##ImplT<Linear>>; \
  using Name##Impl = Name##ImplT<lora::Linear>;                 \
  using Name = Name##T<lora::Linear>

/// Multi-head self-attention with a padding mask.
template <typename Linear>
class DistilBertAttentionImplT : public torch::nn::Module {
 public:
  explicit DistilBertAttentionImplT(const DistilBertConfig& c) : n_heads(c.n_heads) {
    q_lin = register_module("q_lin", Linear(c.dim, c.dim));
    k_lin = register_module("k_lin", Linear(c.dim, c.dim));
    v_lin = register_module("v_lin", Linear(c.dim, c.dim));
    out_lin = register_module("out_lin", Linear(c.dim, c.dim));
    dropout = register_module("dropout", torch::nn::Dropout(c.attention_dropout));
  }

  /// x (B, T, C); `masked` (B, 1, 1, T) true at padding keys, or undefined -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& masked) {
    return out_lin(detail::attend(q_lin(x), k_lin(x), v_lin(x), masked, n_heads, dropout));
  }

  int64_t n_heads;
  Linear q_lin{nullptr}, k_lin{nullptr}, v_lin{nullptr}, out_lin{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
DISTILBERT_MODULE(DistilBertAttention);

/// lin1 -> activation -> lin2 -> dropout.
template <typename Linear>
class DistilBertFFNImplT : public torch::nn::Module {
 public:
  explicit DistilBertFFNImplT(const DistilBertConfig& c) : activation(c.activation) {
    lin1 = register_module("lin1", Linear(c.dim, c.hidden_dim));
    lin2 = register_module("lin2", Linear(c.hidden_dim, c.dim));
    dropout = register_module("dropout", torch::nn::Dropout(c.dropout));
  }

  /// (B, T, C) -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& x) {
    return detail::dropout(lin2(activate(activation, lin1(x))), dropout);
  }

  Activation activation;
  Linear lin1{nullptr}, lin2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
DISTILBERT_MODULE(DistilBertFFN);

/// A post-norm transformer block: x = LN(x + attn(x)); x = LN(x + ffn(x)).
template <typename Linear>
class DistilBertBlockImplT : public torch::nn::Module {
 public:
  explicit DistilBertBlockImplT(const DistilBertConfig& c) {
    const auto ln = torch::nn::LayerNormOptions({c.dim}).eps(1e-12);
    attention = register_module("attention", DistilBertAttentionT<Linear>(c));
    sa_layer_norm = register_module("sa_layer_norm", torch::nn::LayerNorm(ln));
    ffn = register_module("ffn", DistilBertFFNT<Linear>(c));
    output_layer_norm = register_module("output_layer_norm", torch::nn::LayerNorm(ln));
  }

  /// x (B, T, C), masked (B, 1, 1, T) or undefined -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& masked) {
    auto h = sa_layer_norm(attention(x, masked) + x);  // (B, T, C)
    return output_layer_norm(ffn(h) + h);              // (B, T, C)
  }

  DistilBertAttentionT<Linear> attention{nullptr};
  torch::nn::LayerNorm sa_layer_norm{nullptr};
  DistilBertFFNT<Linear> ffn{nullptr};
  torch::nn::LayerNorm output_layer_norm{nullptr};
};
DISTILBERT_MODULE(DistilBertBlock);

/// The stack of blocks, registered as "layer.N" (HF's `Transformer`).
template <typename Linear>
class DistilBertTransformerImplT : public torch::nn::Module {
 public:
  explicit DistilBertTransformerImplT(const DistilBertConfig& c) {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.n_layers; ++i) layer->push_back(DistilBertBlockT<Linear>(c));
  }

  /// x (B, T, C), masked (B, 1, 1, T) or undefined -> (B, T, C)
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& masked) {
    for (const auto& block : *layer) x = block->as<DistilBertBlockImplT<Linear>>()->forward(x, masked);
    return x;
  }

  torch::nn::ModuleList layer{nullptr};
};
DISTILBERT_MODULE(DistilBertTransformer);

/// The bare encoder (HF's DistilBertModel): embeddings then the transformer.
template <typename Linear>
class DistilBertModelImplT : public torch::nn::Module {
 public:
  explicit DistilBertModelImplT(const DistilBertConfig& c, const torch::Tensor& tied_word_weight = {}) : config(c) {
    embeddings = register_module("embeddings", DistilBertEmbeddings(c, tied_word_weight));
    transformer = register_module("transformer", DistilBertTransformerT<Linear>(c));
  }

  /// input_ids (B, T) int64; attention_mask (B, T), 1 = attend, 0 = padding, or undefined
  /// (attend everywhere) -> last_hidden_state (B, T, C)
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {}) {
    detail::check_inputs(input_ids, attention_mask, config.max_position_embeddings, "DistilBERT");
    return transformer(embeddings(input_ids), detail::padding_keys(attention_mask));
  }

  DistilBertConfig config;
  DistilBertEmbeddings embeddings{nullptr};
  DistilBertTransformerT<Linear> transformer{nullptr};
};
DISTILBERT_MODULE(DistilBertModel);

/// What the DistilBERT heads return.
struct DistilBertOutput {
  torch::Tensor logits;             ///< (B, num_labels) for classification, (B, T, V) for masked LM
  torch::Tensor last_hidden_state;  ///< (B, T, C), the encoder's output
};

/// HF's DistilBertForSequenceClassification: the encoder, then on the first token (CLS)
/// pre_classifier -> ReLU -> dropout(seq_classif_dropout) -> classifier.
template <typename Linear>
class DistilBertForSequenceClassificationImplT : public torch::nn::Module {
 public:
  explicit DistilBertForSequenceClassificationImplT(const DistilBertConfig& c) : config(c) {
    distilbert = register_module("distilbert", DistilBertModelT<Linear>(c));
    pre_classifier = register_module("pre_classifier", Linear(c.dim, c.dim));
    classifier = register_module("classifier", Linear(c.dim, c.num_labels));
    dropout = register_module("dropout", torch::nn::Dropout(c.seq_classif_dropout));
  }

  /// input_ids (B, T) int64, attention_mask (B, T) or undefined -> logits (B, num_labels)
  DistilBertOutput forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {}) {
    auto h = distilbert(input_ids, attention_mask);  // (B, T, C)
    auto pooled = h.select(1, 0);                    // (B, C)
    pooled = dropout(torch::relu(pre_classifier(pooled)));
    return {classifier(pooled), h};  // (B, num_labels), (B, T, C)
  }

  DistilBertConfig config;
  DistilBertModelT<Linear> distilbert{nullptr};
  Linear pre_classifier{nullptr}, classifier{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
DISTILBERT_MODULE(DistilBertForSequenceClassification);

/// HF's DistilBertForMaskedLM: the encoder, then vocab_transform -> activation ->
/// vocab_layer_norm (eps 1e-12) -> vocab_projector, whose weight is the word embedding matrix.
class DistilBertForMaskedLMImpl : public torch::nn::Module {
 public:
  explicit DistilBertForMaskedLMImpl(const DistilBertConfig& c) : config(c) {
    // The projector is built first so that the embeddings can share its weight.
    auto projector = lora::Linear(c.dim, c.vocab_size);
    distilbert = register_module("distilbert", DistilBertModel(c, projector->weight));
    vocab_transform = register_module("vocab_transform", lora::Linear(c.dim, c.dim));
    vocab_layer_norm =
        register_module("vocab_layer_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.dim}).eps(1e-12)));
    vocab_projector = register_module("vocab_projector", projector);
  }

  /// input_ids (B, T) int64, attention_mask (B, T) or undefined -> logits (B, T, V)
  DistilBertOutput forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {}) {
    auto h = distilbert(input_ids, attention_mask);                              // (B, T, C)
    auto x = vocab_layer_norm(activate(config.activation, vocab_transform(h)));  // (B, T, C)
    return {vocab_projector(x), h};                                              // (B, T, V)
  }

  DistilBertConfig config;
  DistilBertModel distilbert{nullptr};
  lora::Linear vocab_transform{nullptr};
  torch::nn::LayerNorm vocab_layer_norm{nullptr};
  lora::Linear vocab_projector{nullptr};
};
TORCH_MODULE(DistilBertForMaskedLM);

}  // namespace models

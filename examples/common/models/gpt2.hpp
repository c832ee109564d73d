// GPT-2 (Radford et al. 2019), ported from HF transformers' modeling_gpt2.py: GPT2Model and
// GPT2LMHeadModel, with HF's causal-LM loss. Module names are the checkpoint keys
// (transformer.h.N.attn.c_attn, ...). HF stores its Conv1D weights as (in, out); here c_attn,
// c_proj and c_fc are lora::Linear with (out, in) weights, and the loader transposes them
// (models/checkpoint.hpp). lm_head is a lora::Linear whose weight IS transformer.wte's.
#pragma once

#include <torch/torch.h>

#include <lora/error.hpp>
#include <lora/linear.hpp>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "../errors.hpp"
#include "hub_config.hpp"
#include "layers.hpp"

namespace models {

/// Causal multi-head self-attention.
class GPT2AttentionImpl : public torch::nn::Module {
 public:
  GPT2AttentionImpl(const GPT2Config& c, int64_t layer_idx) : n_head(c.n_head) {
    if (c.scale_attn_weights) score_divisor *= std::sqrt(static_cast<double>(c.n_embd / c.n_head));
    if (c.scale_attn_by_inverse_layer_idx) score_divisor *= static_cast<double>(layer_idx + 1);
    c_attn = register_module("c_attn", lora::Linear(c.n_embd, 3 * c.n_embd));
    c_proj = register_module("c_proj", lora::Linear(c.n_embd, c.n_embd));
    attn_dropout = register_module("attn_dropout", torch::nn::Dropout(c.attn_pdrop));
    resid_dropout = register_module("resid_dropout", torch::nn::Dropout(c.resid_pdrop));
  }

  /// x (B, T, C); future (1, 1, T, T) true above the diagonal; padding (B, 1, 1, T) additive
  /// (0 or the dtype's min) or undefined -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& future, const torch::Tensor& padding) {
    const auto B = x.size(0), T = x.size(1), C = x.size(2), hd = C / n_head;
    auto qkv = c_attn(x).split(C, 2);  // 3 x (B, T, C)
    auto heads = [&](const torch::Tensor& t) { return t.view({B, T, n_head, hd}).transpose(1, 2); };
    auto q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);  // (B, nh, T, hd)
    auto att = torch::matmul(q, k.transpose(-2, -1));              // (B, nh, T, T)
    if (score_divisor != 1.0) att = att / score_divisor;
    att = att.masked_fill(future, mask_value(att.scalar_type()));
    if (padding.defined()) att = att + padding;
    att = attn_dropout(torch::softmax(att, -1));
    auto y = torch::matmul(att, v);                      // (B, nh, T, hd)
    y = y.transpose(1, 2).contiguous().view({B, T, C});  // (B, T, C)
    return resid_dropout(c_proj(y));
  }

  int64_t n_head;
  double score_divisor = 1.0;  ///< sqrt(head_dim) (scale_attn_weights), times layer_idx + 1 if asked
  lora::Linear c_attn{nullptr}, c_proj{nullptr};
  torch::nn::Dropout attn_dropout{nullptr}, resid_dropout{nullptr};
};
TORCH_MODULE(GPT2Attention);

/// c_fc -> activation (gelu_new) -> c_proj -> dropout.
class GPT2MLPImpl : public torch::nn::Module {
 public:
  explicit GPT2MLPImpl(const GPT2Config& c) : act(c.activation_function) {
    c_fc = register_module("c_fc", lora::Linear(c.n_embd, c.n_inner));
    c_proj = register_module("c_proj", lora::Linear(c.n_inner, c.n_embd));
    dropout = register_module("dropout", torch::nn::Dropout(c.resid_pdrop));
  }

  /// (B, T, C) -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& x) { return dropout(c_proj(activate(act, c_fc(x)))); }

  Activation act;
  lora::Linear c_fc{nullptr}, c_proj{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(GPT2MLP);

/// A pre-norm block: x = x + attn(ln_1(x)); x = x + mlp(ln_2(x)).
class GPT2BlockImpl : public torch::nn::Module {
 public:
  GPT2BlockImpl(const GPT2Config& c, int64_t layer_idx) {
    const auto ln = torch::nn::LayerNormOptions({c.n_embd}).eps(c.layer_norm_epsilon);
    ln_1 = register_module("ln_1", torch::nn::LayerNorm(ln));
    attn = register_module("attn", GPT2Attention(c, layer_idx));
    ln_2 = register_module("ln_2", torch::nn::LayerNorm(ln));
    mlp = register_module("mlp", GPT2MLP(c));
  }

  /// x (B, T, C) -> (B, T, C); masks as in GPT2Attention::forward
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& future, const torch::Tensor& padding) {
    x = x + attn(ln_1(x), future, padding);
    return x + mlp(ln_2(x));
  }

  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  GPT2Attention attn{nullptr};
  GPT2MLP mlp{nullptr};
};
TORCH_MODULE(GPT2Block);

/// HF's GPT2Model: token + position embeddings, dropout, the blocks, ln_f.
class GPT2ModelImpl : public torch::nn::Module {
 public:
  /// `tied_wte`, when given, becomes the token embedding matrix (shared, not copied).
  explicit GPT2ModelImpl(const GPT2Config& c, const torch::Tensor& tied_wte = {}) : config(c) {
    auto wte_options = torch::nn::EmbeddingOptions(c.vocab_size, c.n_embd);
    if (tied_wte.defined()) wte_options._weight(tied_wte);
    wte = register_module("wte", torch::nn::Embedding(wte_options));
    wpe = register_module("wpe", torch::nn::Embedding(torch::nn::EmbeddingOptions(c.n_positions, c.n_embd)));
    drop = register_module("drop", torch::nn::Dropout(c.embd_pdrop));
    h = register_module("h", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.n_layer; ++i) h->push_back(GPT2Block(c, i));
    ln_f = register_module("ln_f",
                           torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.n_embd}).eps(c.layer_norm_epsilon)));
  }

  /// input_ids (B, T) int64; attention_mask (B, T), 1 = attend, 0 = padding, or undefined.
  /// Positions are 0..T-1 whatever the mask. -> hidden states after ln_f (B, T, C)
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {}) {
    detail::check_inputs(input_ids, attention_mask, config.n_positions, "GPT-2");
    const auto B = input_ids.size(0), T = input_ids.size(1);
    auto pos = torch::arange(T, input_ids.options());       // (T)
    auto x = drop(wte(input_ids) + wpe(pos).unsqueeze(0));  // (B, T, C)
    auto future = torch::ones({T, T}, pos.options().dtype(torch::kBool)).triu(1).view({1, 1, T, T});
    torch::Tensor padding;  // (B, 1, 1, T): 0 where attended, the dtype's min at padding
    if (attention_mask.defined())
      padding = (1.0 - attention_mask.to(x.scalar_type())).view({B, 1, 1, T}) * mask_value(x.scalar_type());
    for (const auto& block : *h) x = block->as<GPT2BlockImpl>()->forward(x, future, padding);
    return ln_f(x);
  }

  GPT2Config config;
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::Dropout drop{nullptr};
  torch::nn::ModuleList h{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
};
TORCH_MODULE(GPT2Model);

/// HF's GPT2LMHeadModel: GPT2Model then lm_head (no bias), tied to wte unless the config
/// says tie_word_embeddings false.
class GPT2LMHeadModelImpl : public torch::nn::Module {
 public:
  explicit GPT2LMHeadModelImpl(const GPT2Config& c) : config(c) {
    // lm_head is built first so that wte can share its weight.
    auto head = lora::Linear(torch::nn::LinearOptions(c.n_embd, c.vocab_size).bias(false));
    transformer = register_module("transformer", GPT2Model(c, c.tie_word_embeddings ? head->weight : torch::Tensor()));
    lm_head = register_module("lm_head", head);
  }

  /// input_ids (B, T) int64, attention_mask (B, T) or undefined -> logits (B, T, V)
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {}) {
    return lm_head(transformer(input_ids, attention_mask));
  }

  GPT2Config config;
  GPT2Model transformer{nullptr};
  lora::Linear lm_head{nullptr};
};
TORCH_MODULE(GPT2LMHeadModel);

namespace detail {

/// logits[:, :-1] as (N, V) and labels[:, 1:] as (N): each position predicts the next token.
inline std::pair<torch::Tensor, torch::Tensor> shift_for_next_token(const torch::Tensor& logits,
                                                                    const torch::Tensor& labels) {
  if (logits.dim() != 3 || labels.sizes() != logits.sizes().slice(0, 2))
    throw examples::DataError(examples::str("causal LM loss: logits ", logits.sizes(), " and labels ", labels.sizes(),
                                                " do not fit; expected (B, T, V) and (B, T)."));
  const auto T = logits.size(1), V = logits.size(2);
  return {logits.narrow(1, 0, std::max<int64_t>(T - 1, 0)).reshape({-1, V}),
          labels.narrow(1, std::min<int64_t>(1, T), std::max<int64_t>(T - 1, 0)).reshape({-1})};
}

}  // namespace detail

/// HF's causal-LM loss: cross-entropy of logits[:, t] against labels[:, t + 1], averaged over
/// the targets that are not -100 (NaN when none is left, as in HF). logits (B, T, V), labels (B, T).
inline torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  auto [x, y] = detail::shift_for_next_token(logits, labels);
  namespace F = torch::nn::functional;
  return F::cross_entropy(x, y, F::CrossEntropyFuncOptions().ignore_index(-100));
}

/// As causal_lm_loss, summed instead of averaged: the summed NLL (nats) and the number of
/// targets counted, as 0-dim tensors on the logits' device (no host synchronisation), so
/// perplexity over many batches is exp(sum of the first / sum of the second). Computed in
/// float32 whatever the logits' dtype.
inline std::pair<torch::Tensor, torch::Tensor> causal_lm_nll_sum(const torch::Tensor& logits,
                                                                 const torch::Tensor& labels) {
  auto [x, y] = detail::shift_for_next_token(logits, labels);
  namespace F = torch::nn::functional;
  auto sum = F::cross_entropy(x.to(torch::kFloat), y, F::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
  return {sum, (y != -100).sum()};
}

/// As causal_lm_nll_sum, per row of the batch: the summed NLL (B) and the targets counted (B),
/// in float32, differentiable. A row's mean is its sum / its count.
inline std::pair<torch::Tensor, torch::Tensor> causal_lm_row_nll(const torch::Tensor& logits,
                                                                 const torch::Tensor& labels) {
  auto [x, y] = detail::shift_for_next_token(logits, labels);
  namespace F = torch::nn::functional;
  const auto B = logits.size(0);
  auto nll = F::cross_entropy(x.to(torch::kFloat), y, F::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kNone));
  return {nll.view({B, -1}).sum(/*dim=*/1), (y != -100).view({B, -1}).sum(/*dim=*/1)};  // (B), (B)
}

/// A running sum of NLL over predicted tokens, on the host; add batches with +=.
struct TokenNll {
  double nll = 0;      ///< nats
  int64_t tokens = 0;  ///< targets counted
  TokenNll& operator+=(const TokenNll& o) {
    nll += o.nll;
    tokens += o.tokens;
    return *this;
  }
  /// exp(mean NLL per counted target).
  double perplexity() const {
    if (tokens <= 0) throw examples::DataError("perplexity: no predicted tokens were summed");
    return std::exp(nll / static_cast<double>(tokens));
  }
};

/// causal_lm_nll_sum, brought to the host.
inline TokenNll causal_lm_nll(const torch::Tensor& logits, const torch::Tensor& labels) {
  const auto [sum, count] = causal_lm_nll_sum(logits, labels);
  return {sum.item<double>(), count.item<int64_t>()};
}

}  // namespace models

// DistilBERT's attention core: detail::attend, multi-head scaled dot-product attention of
// the q, k, v projections with no temporary it does not need, and detail::padding_keys, the
// key mask it takes from an attention_mask (none when nothing is padded).
#pragma once

#include <torch/torch.h>

#include <cmath>
#include <cstdint>

#include "dropout.hpp"
#include "layers.hpp"

namespace models {

namespace detail {

/// Multi-head scaled dot-product attention of the projections q, k, v (B, T, C), with
/// `masked` (B, 1, 1, T) true at padding keys (or undefined) and `dropout` on the attention
/// weights -> the context (B, T, C), before the output projection.
///
/// HF's formula, softmax(masked_fill(q k^T / sqrt(hd), mask, lowest)) v, with no temporary
/// it does not need: q, k, v are copied once each to (B * nh, T, hd) for bmm (a copy matmul
/// would make anyway), the 1/sqrt(hd) scale is applied in place on q's copy (T x hd values
/// per head instead of T x T scores), the mask is written in place into the scores, and the
/// dropout on the weights is FastDropout.
inline torch::Tensor attend(const torch::Tensor& q_proj, const torch::Tensor& k_proj, const torch::Tensor& v_proj,
                            const torch::Tensor& masked, int64_t n_heads, torch::nn::Dropout& dropout) {
  const auto B = q_proj.size(0), T = q_proj.size(1), C = q_proj.size(2), hd = C / n_heads;
  auto heads = [&](const torch::Tensor& t) {  // (B, T, C) -> (B * nh, T, hd)
    return t.view({B, T, n_heads, hd}).transpose(1, 2).reshape({B * n_heads, T, hd});
  };
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  auto q = heads(q_proj);
  // reshape copied (T > 1 and nh > 1): scale the copy in place; else it aliases q_proj.
  q = q.is_alias_of(q_proj) ? q * scale : q.mul_(scale);
  auto att = torch::bmm(q, heads(k_proj).transpose(1, 2));  // (B * nh, T, T)
  if (masked.defined())
    att.masked_fill_(masked.expand({B, n_heads, 1, T}).reshape({B * n_heads, 1, T}), mask_value(att.scalar_type()));
  att = detail::dropout(torch::softmax(att, -1), dropout);
  auto y = torch::bmm(att, heads(v_proj));                               // (B * nh, T, hd)
  return y.view({B, n_heads, T, hd}).transpose(1, 2).reshape({B, T, C});  // (B, T, C)
}

/// attention_mask (B, T), 1 = attend, 0 = padding, or undefined -> (B, 1, 1, T), true at the
/// keys to ignore, or undefined when there are none. A batch without padding needs no masking
/// pass over the scores (nor its backward); on the CPU asking costs nothing, on a GPU it would
/// wait for the device, so there the mask is kept.
inline torch::Tensor padding_keys(const torch::Tensor& attention_mask) {
  if (!attention_mask.defined()) return {};
  auto masked = (attention_mask == 0).view({attention_mask.size(0), 1, 1, attention_mask.size(1)});
  if (masked.device().is_cpu() && !masked.any().item<bool>()) return {};
  return masked;
}

}  // namespace detail

}  // namespace models

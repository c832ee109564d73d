// The LoRA and DoRA formulas as functions of tensors, what lora::Linear computes:
//   add_lora     y + s * (dropout(x) A^T) B^T
//   lora_linear  x W^T + b + s * (dropout(x) A^T) B^T, fused into one autograd node
//   add_dora     (m / ||W + s B A||_row) * (x W^T + s * (dropout(x) A^T) B^T), norm detached
#pragma once

#include <torch/autograd.h>
#include <torch/types.h>

#include "detail/lora_linear_function.hpp"

namespace lora::detail {

/// dropout(x) as the LoRA branch sees it: x * mask / (1 - p) with a given 0/1 `dropout_mask`,
/// a Bernoulli draw with p > 0 in training mode, else undefined (no dropout).
inline torch::Tensor dropped_input(const torch::Tensor& x, double p, bool training, const torch::Tensor& dropout_mask) {
  if (dropout_mask.defined()) return x * dropout_mask / (1.0 - p);
  if (training && p > 0) return torch::dropout(x, p, /*train=*/true);
  return {};
}

}  // namespace lora::detail

namespace lora::functional {

/// y + s * (dropout(x) A^T) B^T, fused into one addmm. `x` (..., in), `y` (..., out).
/// `dropout_mask`, if defined, replaces the random dropout mask (0/1 values, x's shape):
/// dropout(x) = x * mask / (1 - p). Without a mask and with p > 0 in training mode, a
/// Bernoulli mask is drawn.
inline torch::Tensor add_lora(const torch::Tensor& y, const torch::Tensor& x, const torch::Tensor& A,
                              const torch::Tensor& B, double scale, double p = 0.0, bool training = false,
                              const torch::Tensor& dropout_mask = {}) {
  const auto dropped = detail::dropped_input(x, p, training, dropout_mask);
  const auto& xd = dropped.defined() ? dropped : x;
  const auto out = B.size(0);
  const auto r = A.size(0);
  auto h = torch::matmul(xd, A.t()).reshape({-1, r});  // (N, r)
  auto y2 = torch::addmm(y.reshape({-1, out}), h, B.t(), /*beta=*/1, /*alpha=*/scale);  // (N, out)
  return y2.view(y.sizes());
}

/// x W^T + b + s * (dropout(x) A^T) B^T in one autograd node (lora::detail::LoraLinearFunction):
/// what lora::Linear computes with one adapter, cheaper in time and memory than
/// linear(x, W, b) followed by add_lora() and equal to it within float rounding, forward and
/// backward. `p`, `training` and `dropout_mask` as for add_lora.
inline torch::Tensor lora_linear(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                 const torch::Tensor& A, const torch::Tensor& B, double scale, double p = 0.0,
                                 bool training = false, const torch::Tensor& dropout_mask = {}) {
  const auto xd = detail::dropped_input(x, p, training, dropout_mask);
  if (!torch::GradMode::is_enabled())
    return lora::detail::lora_linear_forward(x, xd.defined() ? xd : x, W, b, A, B, scale);
  using opt = c10::optional<torch::Tensor>;
  return lora::detail::LoraLinearFunction::apply(x, xd.defined() ? opt(xd) : opt(), W, b.defined() ? opt(b) : opt(),
                                                 A, B, scale);
}

/// DoRA's row norms ||W + s B A||_row, (out), computed without autograd: DoRA treats the norm
/// as a constant (section 4.3 of the paper; PEFT detaches it too).
inline torch::Tensor dora_weight_norm(const torch::Tensor& W, const torch::Tensor& A, const torch::Tensor& B,
                                      double scale) {
  torch::NoGradGuard no_grad;
  return torch::addmm(W.detach(), B.detach().to(W.dtype()), A.detach().to(W.dtype()), /*beta=*/1, /*alpha=*/scale)
      .norm(2, {1});
}

/// One DoRA adapter on top of `base` = x W^T (no bias), `x` (..., in), `base` (..., out):
///   (m / n) * (base + s * (dropout(x) A^T) B^T),   n = ||W + s B A||_row, detached.
/// With the bias added outside, this is DoRA's y = (m / n) (W + s B A) x + b when dropout is
/// off. PEFT writes the same sum as base + (m/n - 1) base + (m/n) s lora and, with dropout on
/// in training, evaluates its second term on dropout(x): one more full (..., in) x (in, out)
/// matmul. Here the base product is computed once, on the un-dropped x, and dropout only
/// touches the LoRA branch: identical in eval mode and for p = 0, the same in expectation
/// (dropout(x) has mean x) otherwise, and as cheap as LoRA plus one (out)-vector scale.
inline torch::Tensor add_dora(const torch::Tensor& base, const torch::Tensor& x, const torch::Tensor& W,
                              const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& magnitude,
                              double scale, double p = 0.0, bool training = false,
                              const torch::Tensor& dropout_mask = {}) {
  const auto factor = magnitude / dora_weight_norm(W, A, B, scale);  // (out); gradient to m only
  return add_lora(base, x, A, B, scale, p, training, dropout_mask) * factor;
}

}  // namespace lora::functional

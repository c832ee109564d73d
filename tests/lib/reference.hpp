// The unfused LoRA and DoRA formulas, written as plainly as possible: what the library's fused
// and in-layer computations are tested against.
#pragma once

#include <torch/torch.h>

namespace lora_test {

/// x W^T + b + s * (dropout(x) A^T) B^T; `dropout_input` is dropout(x) (x when undefined).
inline torch::Tensor lora_linear_reference(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                           const torch::Tensor& A, const torch::Tensor& B, double scale,
                                           const torch::Tensor& dropout_input = {}) {
  auto base = torch::matmul(x, W.t());
  if (b.defined()) base = base + b;
  const auto& xd = dropout_input.defined() ? dropout_input : x;
  return base + scale * torch::matmul(torch::matmul(xd, A.t()), B.t());
}

/// DoRA without dropout: (m / ||W + s B A||_row) * (x W^T + s (x A^T) B^T) + b, the norm detached
/// (what PEFT computes too in eval mode or without dropout; with dropout see peft_dora_reference).
inline torch::Tensor dora_linear_reference(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                           const torch::Tensor& A, const torch::Tensor& B,
                                           const torch::Tensor& magnitude, double scale) {
  auto n = (W + scale * torch::mm(B, A)).norm(2, {1}).detach();
  auto y = (magnitude / n) * (torch::matmul(x, W.t()) + scale * torch::matmul(torch::matmul(x, A.t()), B.t()));
  return b.defined() ? y + b : y;
}

/// DoRA the way PEFT computes it, dropout included (peft/tuners/lora/variants.py,
/// DoraLinearVariant.forward, and dora.py, DoraLinearLayer.forward): `result` is the base layer
/// on x itself; when dropout is active (`dropout_input` = dropout(x) defined), x is replaced by
/// dropout(x) for everything else, so both the magnitude's rescaling of the base product and the
/// LoRA branch see dropout(x):
///   y = (x W^T + b) + (m/n - 1) (xd W^T) + (m/n) s (xd A^T) B^T,   xd = dropout(x),
/// and without dropout PEFT reuses result - b for xd W^T. n = ||W + s B A||_row, detached.
inline torch::Tensor peft_dora_reference(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                         const torch::Tensor& A, const torch::Tensor& B,
                                         const torch::Tensor& magnitude, double scale,
                                         const torch::Tensor& dropout_input = {}) {
  auto result = torch::matmul(x, W.t());
  if (b.defined()) result = result + b;
  const auto weight_norm = (W + scale * torch::mm(B, A)).norm(2, {1}).detach();
  const auto mag_norm_scale = (magnitude / weight_norm).view({1, -1});
  torch::Tensor xd, base_result;
  if (dropout_input.defined()) {
    xd = dropout_input;
    base_result = torch::matmul(xd, W.t());
  } else {
    xd = x;
    base_result = b.defined() ? result - b : result;
  }
  const auto lora_result = torch::matmul(torch::matmul(xd, A.t()), B.t());
  return result + (mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scale;
}

}  // namespace lora_test

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

/// DoRA: (m / ||W + s B A||_row) * (x W^T + s (dropout(x) A^T) B^T) + b, the norm detached.
inline torch::Tensor dora_linear_reference(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b,
                                           const torch::Tensor& A, const torch::Tensor& B,
                                           const torch::Tensor& magnitude, double scale,
                                           const torch::Tensor& dropout_input = {}) {
  const auto& xd = dropout_input.defined() ? dropout_input : x;
  auto n = (W + scale * torch::mm(B, A)).norm(2, {1}).detach();
  auto y = (magnitude / n) * (torch::matmul(x, W.t()) + scale * torch::matmul(torch::matmul(xd, A.t()), B.t()));
  return b.defined() ? y + b : y;
}

}  // namespace lora_test

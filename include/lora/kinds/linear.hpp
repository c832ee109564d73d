// The Linear kind (lora::Linear, torch::nn::Linear): W (out, in) is the matrix itself,
// A (r, in), B (out, r), the branch s * (dropout(x) A^T) B^T (functional::add_lora), DoRA
// supported. The model of a layer kind: see detail/kind.hpp for the interface.
#pragma once

#include <torch/types.h>

#include <string>

#include "../layer_adapter.hpp"
#include "../detail/kind.hpp"
#include "../functional.hpp"

namespace lora::kinds {

class Linear final : public detail::Kind {
 public:
  std::string name() const override { return "Linear"; }
  bool supports_dora() const override { return true; }
  /// x (..., in), y (..., out).
  torch::Tensor add_branch(const LayerAdapter& a, const torch::Tensor& y, const torch::Tensor& x,
                           bool training) const override {
    return functional::add_lora(y, x, a.A, a.B, a.scale, a.dropout, training);
  }
};

}  // namespace lora::kinds

// The Linear kind (lora::Linear, torch::nn::Linear): W (out, in) is the matrix itself,
// A (r, in), B (out, r), the branch s * (dropout(x) A^T) B^T (functional::add_lora), DoRA
// supported. The model of a layer kind: see detail/kind.hpp for the interface.
#pragma once

#include <torch/types.h>

#include <string>

#include "../layer_adapter.hpp"
#include "../detail/routing.hpp"
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

  bool token_wise() const override { return true; }
  std::string unroutable() const override { return ""; }
  /// x (N, ..., in), y (N, ..., out); row b through its own A and B.
  torch::Tensor add_routed_branch(const detail::StackedAdapters& st, const torch::Tensor& slot, const torch::Tensor& y,
                                  const torch::Tensor& x, bool training) const override {
    // st.A (K+1, R, in), st.B (K+1, out, R): s in B
    const auto n = x.size(0);
    const auto x3 = detail::dropped_rows(x, st.adapters, slot, training).reshape({n, -1, x.size(-1)});  // (N, T, in)
    const auto h = torch::bmm(x3, st.A.index_select(0, slot).transpose(1, 2));                     // (N, T, R)
    return torch::baddbmm(y.reshape({n, -1, y.size(-1)}), h, st.B.index_select(0, slot).transpose(1, 2))
        .view(y.sizes());  // (N, ..., out): y + each row's branch in one kernel
  }
};

}  // namespace lora::kinds

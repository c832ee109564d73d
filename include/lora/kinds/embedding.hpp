// The Embedding kind (lora::Embedding, torch::nn::Embedding), as PEFT lays it out: W (num, dim)
// is seen transposed, so A is (r, num) and B (dim, r), delta W = s (B A)^T, and the branch looks
// the ids up in A^T: y + s * embedding(x, A^T) B^T. PEFT's default init for embeddings is
// A = 0, B ~ N(0, 1) (init.hpp applies it). Saved as "lora_embedding_A" / "lora_embedding_B"
// (no ".weight"). padding_idx: the padding row stays the base's, as torch keeps it fixed: A's
// padding column is zero after any init (and the base's row restored for an init that changes
// the base) and gets no gradient, so the adapter adds nothing there and the drop-in and the
// merged weight agree, values and gradients. max_norm renormalizes the base's rows only
// (F::embedding would rewrite A in place); scale_grad_by_freq applies to A too.
#pragma once

#include <torch/nn/functional/embedding.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "../layer_adapter.hpp"
#include "../detail/routing.hpp"
#include "../detail/kind.hpp"

namespace lora::kinds {

class Embedding final : public detail::Kind {
 public:
  Embedding() = default;
  Embedding(std::optional<int64_t> padding_idx, bool scale_grad_by_freq)
      : padding_idx_(padding_idx), scale_grad_by_freq_(scale_grad_by_freq) {}

  std::string name() const override { return "Embedding"; }
  detail::MatrixView view() const override { return {/*transpose=*/true}; }
  detail::AdapterNames names() const override {
    return {"lora_embedding_A", "lora_embedding_A", "lora_embedding_B", "lora_embedding_B"};
  }
  bool embedding() const override { return true; }
  bool supports_dropout() const override { return false; }
  void after_init(torch::Tensor& A, torch::Tensor& /*B*/, torch::Tensor& M, const torch::Tensor& M0) const override {
    if (!padding_idx_) return;
    const auto pad = *padding_idx_ < 0 ? *padding_idx_ + A.size(1) : *padding_idx_;
    A.select(1, pad).zero_();                  // (r): no adapter on the padding row
    M.select(1, pad).copy_(M0.select(1, pad));  // M = W^T: the padding row as it was
  }

  /// x: ids (...), y (..., dim).
  torch::Tensor add_branch(const LayerAdapter& a, const torch::Tensor& y, const torch::Tensor& x,
                           bool /*training*/) const override {
    namespace F = torch::nn::functional;
    auto opts = F::EmbeddingFuncOptions().scale_grad_by_freq(scale_grad_by_freq_);
    if (padding_idx_) opts.padding_idx(*padding_idx_);
    const auto h = F::embedding(x, a.A.t(), opts);                      // (..., r)
    return y + torch::matmul(h, a.B.t()).mul_(a.scale);                 // (..., dim)
  }

  bool token_wise() const override { return true; }
  std::string unroutable() const override {
    return scale_grad_by_freq_ ? "scale_grad_by_freq is set (the per-row lookup does not scale gradients by frequency)"
                               : "";
  }
  /// x: ids (N, ...), y (N, ..., dim). Row b looks its ids up in its own A^T (the stacked
  /// tables side by side, each `num` rows long).
  torch::Tensor add_routed_branch(const detail::StackedAdapters& st, const torch::Tensor& slot, const torch::Tensor& y,
                                  const torch::Tensor& x, bool /*training*/) const override {
    namespace F = torch::nn::functional;
    const auto& A = st.A;  // (K+1, R, num)
    const auto& B = st.B;  // (K+1, dim, R): s in B
    const auto n = x.size(0), R = A.size(1), num = A.size(2);
    std::vector<int64_t> shape(x.dim(), 1);
    shape[0] = n;
    auto h = F::embedding(x + slot.view(shape) * num, A.transpose(1, 2).reshape({-1, R}));  // (N, ..., R)
    if (padding_idx_) {  // the padding row keeps no adapter, nor a gradient
      const auto pad = *padding_idx_ < 0 ? *padding_idx_ + num : *padding_idx_;
      h = h * (x != pad).unsqueeze(-1).to(h.dtype());
    }
    return torch::baddbmm(y.reshape({n, -1, y.size(-1)}), h.reshape({n, -1, R}), B.index_select(0, slot).transpose(1, 2))
        .view(y.sizes());
  }

 private:
  std::optional<int64_t> padding_idx_;
  bool scale_grad_by_freq_ = false;
};

}  // namespace lora::kinds

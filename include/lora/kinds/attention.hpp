// The attention in-projection kinds of torch::nn::MultiheadAttention (and so of
// TransformerEncoderLayer / TransformerDecoderLayer / Transformer), whose query, key and value
// projections are one parameter, in_proj_weight (3E, E), rows [q; k; v]:
//   "<attention>.in_proj"    the whole matrix: A (r, E), B (3E, r), PEFT's layout
//   "<attention>.in_proj.q"  rows [0, E): A (r, E), B (E, r); ".k" rows [E, 2E), ".v" [2E, 3E)
// The slices go beyond PEFT (which can adapt only the whole in_proj, and always together with
// out_proj), so that q and v alone can be adapted, as the LoRA paper does. out_proj is a Linear
// child of the attention and is adapted as a Linear. These layers exist only on the
// compatibility path (the attention's forward reads in_proj_weight, which the library
// re-parametrizes); there is no drop-in attention.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>

#include "../layer_adapter.hpp"
#include "../detail/kind.hpp"
#include "../error.hpp"

namespace lora::kinds {

class InProj final : public detail::Kind {
 public:
  /// `part`: "" (the whole in_proj), "q", "k" or "v"; `embed_dim` E.
  InProj(std::string part, int64_t embed_dim) : part_(std::move(part)), embed_dim_(embed_dim) {}

  /// The parts an attention offers, in order.
  static const char* const* parts() {
    static const char* const p[] = {"", "q", "k", "v", nullptr};
    return p;
  }

  std::string name() const override { return "MultiheadAttention.in_proj" + (part_.empty() ? "" : "." + part_); }
  detail::MatrixView view() const override {
    if (part_.empty()) return {};
    const int64_t index = part_ == "q" ? 0 : part_ == "k" ? 1 : 2;
    return {/*transpose=*/false, index * embed_dim_, embed_dim_};
  }
  const std::string& part() const { return part_; }

  torch::Tensor add_branch(const LayerAdapter&, const torch::Tensor&, const torch::Tensor&, bool) const override {
    throw Error(detail::str("lora: ", name(), " has no drop-in layer; its adapters re-parametrize in_proj_weight."));
  }

 private:
  std::string part_;
  int64_t embed_dim_ = 0;
};

}  // namespace lora::kinds

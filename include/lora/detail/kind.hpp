// Layer kinds: what the library needs to know to give one kind of layer (Linear, Embedding,
// Conv1d/2d/3d, an attention in-projection or one of its q/k/v slices) LoRA adapters. Each kind
// is one file in lora/kinds/; everything else (the adapter bank, init policies, variants, the
// compatibility path, merges, state dicts, PEFT files) works through this interface.
//
// At heart every adapter is a pair of matrices. A kind names a matrix view M (out_m, in_m) of
// the layer's weight W on which the adapter adds s B A, with A (r, in_m) and B (out_m, r):
//   Linear           M = W                      (out, in)
//   Embedding        M = W^T                    (dim, num): delta W = s (B A)^T, as PEFT
//   Conv1d/2d/3d     M = W.view(out, in * k...)  A stored (r, in, k...), B (out, r, 1...)
//   in_proj          M = W                      (3E, E) of a MultiheadAttention
//   in_proj.q/.k/.v  M = W[0:E] / W[E:2E] / W[2E:3E]
// So init policies (which fill A and B as matrices and may rewrite M), merges, the
// compatibility path's effective weight and its gradients are one piece of code for every kind.
// A kind adds the shapes in which A and B are stored (and saved), the adapter's branch on the
// drop-in path (the input goes through A and B without forming delta W), and PEFT's names.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace lora {
struct LayerAdapter;
}  // namespace lora

namespace lora::detail {

struct StackedAdapters;  // detail/routing.hpp

/// Where B A goes in a weight: M = rows [row_offset, row_offset + rows) of W seen as a matrix
/// (transposed, or with every dimension after the first flattened).
struct MatrixView {
  bool transpose = false;  ///< M = W^T (Embedding)
  int64_t row_offset = 0;
  int64_t rows = -1;  ///< -1: every row

  /// M as a view of `w` (writes to it write to `w`): `w` must be contiguous when it has more
  /// than two dimensions.
  torch::Tensor of(const torch::Tensor& w) const {
    auto m = transpose ? w.t() : w.dim() == 2 ? w : w.view({w.size(0), -1});
    return rows < 0 ? m : m.narrow(0, row_offset, rows);
  }
};

/// PEFT's names of A's and B's tensors on one kind of layer: the holder the tensor is
/// registered under on the layer ("<holder>.<adapter name>.weight") and its key in state dicts
/// and adapter files ("<layer path>.<key>").
struct AdapterNames {
  const char* a_holder = "lora_A";
  const char* a_key = "lora_A.weight";
  const char* b_holder = "lora_B";
  const char* b_key = "lora_B.weight";
};

/// One kind of layer (see the top). Instances may carry the layer's geometry (a convolution's
/// stride and padding) and are shared by the adapters of that layer.
class Kind {
 public:
  virtual ~Kind() = default;

  /// "Linear", "Embedding", "Conv2d", "MultiheadAttention.in_proj", "MultiheadAttention.in_proj.q".
  virtual std::string name() const = 0;
  /// Where B A goes in the weight.
  virtual MatrixView view() const { return {}; }
  /// A's and B's shapes as stored and saved, for rank r on M (out_m, in_m).
  virtual std::vector<int64_t> a_shape(int64_t r, int64_t in_m) const { return {r, in_m}; }
  virtual std::vector<int64_t> b_shape(int64_t out_m, int64_t r) const { return {out_m, r}; }
  /// PEFT's names of A and B.
  virtual AdapterNames names() const { return {}; }
  /// An embedding: PEFT initialises its adapters with A = 0, B ~ N(0, 1) (init.hpp).
  virtual bool embedding() const { return false; }
  /// Whether LoRA dropout can act on the branch's input (an embedding's input is token ids).
  virtual bool supports_dropout() const { return true; }
  /// Whether a DoRA adapter can sit on this kind (as the library implements DoRA).
  virtual bool supports_dora() const { return false; }
  /// Adjusts a new adapter after its init policy ran: `A` (r, in_m) and `B` (out_m, r) as
  /// matrices, `M` the matrix view of the weight as the policy left it, `M0` as it was before.
  /// (Embedding: the padding row keeps no adapter, see kinds/embedding.hpp.)
  virtual void after_init(torch::Tensor& /*A*/, torch::Tensor& /*B*/, torch::Tensor& /*M*/,
                          const torch::Tensor& /*M0*/) const {}
  /// Why this layer cannot carry an adapter (an option of the layer the library does not
  /// support, on the drop-in path or, with `reparametrized`, the compatibility path), or "".
  virtual std::string unsupported(bool /*reparametrized*/) const { return ""; }

  /// y + adapter `a`'s branch for the layer's input `x`, computed without forming delta W:
  /// s * B(A(dropout(x))) in the layer's output layout (the drop-in path).
  virtual torch::Tensor add_branch(const LayerAdapter& a, const torch::Tensor& y, const torch::Tensor& x,
                                   bool training) const = 0;
  /// s * (B A) in the weight's layout (the part of W the view covers): what a merge adds.
  virtual torch::Tensor delta(const LayerAdapter& a) const;

  /// Whether the layer treats every position after the first (batch) dimension on its own
  /// (Linear, Embedding; not a convolution): then consecutive rows can be computed as one.
  virtual bool token_wise() const { return false; }
  /// Why rows of this kind's drop-in layer cannot each use their own adapter (lora/routing.hpp),
  /// or "" if they can.
  virtual std::string unroutable() const { return "per-row routing is not implemented for it"; }
  /// y + each row's own branch (lora/routing.hpp): row b of the batch (the first dimension of
  /// `x` and `y`) goes through adapter slot[b] of `stacked`, or none where slot[b] ==
  /// stacked.adapters.size(). `slot` is a long tensor (N) on x's device. One batched
  /// computation for all rows, with the adapters' A and s B stacked and zero-padded to the
  /// largest rank (detail/routing.hpp).
  virtual torch::Tensor add_routed_branch(const StackedAdapters& /*stacked*/, const torch::Tensor& /*slot*/,
                                          const torch::Tensor& /*y*/, const torch::Tensor& /*x*/,
                                          bool /*training*/) const {
    throw std::logic_error("lora: " + name() + " has no per-row path (Kind::unroutable() should have said so)");
  }
};

/// A as the matrix (r, in_m) and B as (out_m, r), whatever shapes they are stored in (views).
/// Defined in layer_adapter.hpp, with Kind::delta, where LayerAdapter is complete.
inline torch::Tensor a_matrix(const LayerAdapter& a);
inline torch::Tensor b_matrix(const LayerAdapter& a);

}  // namespace lora::detail

// Per-row routing, the internal half (lora/routing.hpp is the public one): the routing state a
// thread's RowRouting scope installs, and the gathered computation every layer kind shares.
// Each row b of the batch uses adapter slot[b] of the layer's adapters in use, or none. The
// adapters' A and B, as matrices (detail/kind.hpp), are zero-padded to the largest rank R and
// stacked with one all-zero slot at the end (rows on the base model, or whose adapter this layer
// does not carry); s is folded into B. Then x goes through each row's own A and B in one batched
// product, not one forward per sub-batch.
#pragma once

#include <torch/nn/functional/padding.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../layer_adapter.hpp"

namespace lora::detail {

/// What a RowRouting scope says: the adapters in use (distinct names, sorted) and, per row, the
/// index of its adapter in `names`, or -1 for the base model alone.
struct Routing {
  std::vector<std::string> names;
  std::vector<int64_t> row_name;
};

/// This thread's routing (nullptr: none). Each thread has its own, so one server thread's
/// routing never reaches another's forward pass.
inline const Routing*& routing_slot() {
  thread_local const Routing* current = nullptr;
  return current;
}
inline const Routing* current_routing() { return routing_slot(); }

/// The adapters in `adapters` as matrices, stacked and zero-padded to the largest rank R, with an
/// all-zero slot last: A (K + 1, R, in_m) and s B (K + 1, out_m, R). Differentiable in A and B.
inline std::pair<torch::Tensor, torch::Tensor> stack_adapters(const std::vector<const LayerAdapter*>& adapters) {
  namespace F = torch::nn::functional;
  int64_t R = 0;
  for (const auto* a : adapters) R = std::max(R, a->rank);
  std::vector<torch::Tensor> As, Bs;
  for (const auto* a : adapters) {
    const auto pad = R - a->rank;
    As.push_back(F::pad(a_matrix(*a), F::PadFuncOptions({0, 0, 0, pad})));               // (R, in_m)
    Bs.push_back(F::pad(b_matrix(*a) * a->scale, F::PadFuncOptions({0, pad})));          // (out_m, R)
  }
  As.push_back(torch::zeros_like(As.front()));
  Bs.push_back(torch::zeros_like(Bs.front()));
  return {torch::stack(As), torch::stack(Bs)};
}

/// x with LoRA dropout applied row by row (row b's adapter's probability `p[b]`), in training
/// mode; x itself otherwise or when no adapter in use has dropout.
inline torch::Tensor dropped_rows(const torch::Tensor& x, const std::vector<const LayerAdapter*>& adapters,
                                  const torch::Tensor& slot, bool training) {
  bool any = false;
  for (const auto* a : adapters) any |= a->dropout > 0;
  if (!training || !any) return x;
  std::vector<double> p;
  for (const auto* a : adapters) p.push_back(a->dropout);
  p.push_back(0);
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = x.size(0);
  const auto keep = (1 - torch::tensor(p, x.options()).index_select(0, slot)).view(shape);  // (B, 1...)
  return x * torch::bernoulli(keep.expand_as(x)) / keep;
}

}  // namespace lora::detail

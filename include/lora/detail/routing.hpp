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

#include <algorithm>
#include <cstdint>
#include <functional>
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

/// One layer's part of a routed forward pass: the layer's adapters that the routing uses
/// (`in_use`) and each row's slot among them (`in_use.size()`: the base model alone).
struct RoutedRows {
  std::vector<const LayerAdapter*> in_use;
  std::vector<int64_t> slot;
  /// Whether every row uses the same adapter (or none): then the layer's ordinary forward with
  /// uniform_adapters() active computes the routed output exactly.
  bool uniform() const { return std::adjacent_find(slot.begin(), slot.end(), std::not_equal_to<int64_t>()) == slot.end(); }
  /// The adapter all rows use, as a list (empty: the base model). For uniform() rows.
  std::vector<const LayerAdapter*> uniform_adapters() const {
    if (slot.empty() || slot.front() >= static_cast<int64_t>(in_use.size())) return {};
    return {in_use[static_cast<size_t>(slot.front())]};
  }
};

/// A run of consecutive rows with the same slot: rows [begin, begin + length) use `slot`.
struct RowRun {
  int64_t begin, length, slot;
};

/// `slot` cut into runs of consecutive equal slots, in order.
inline std::vector<RowRun> row_runs(const std::vector<int64_t>& slot) {
  std::vector<RowRun> runs;
  for (size_t b = 0; b < slot.size(); ++b) {
    if (!runs.empty() && runs.back().slot == slot[b]) ++runs.back().length;
    else runs.push_back({static_cast<int64_t>(b), 1, slot[b]});
  }
  return runs;
}

/// The adapters of a routed forward, as the kinds' add_routed_branch() takes them: the adapters
/// and their A and s B stacked (stack_adapters below).
struct StackedAdapters {
  std::vector<const LayerAdapter*> adapters;
  torch::Tensor A, B;
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

// Per-row adapters: one forward pass in which each row of the batch uses its own adapter (by
// name), or the base model alone (lora::kBaseOnly), as a server answering requests for many
// adapters batches them. LibTorch's forward() signatures are fixed, so the routing is a scope:
//
//   {
//     lora::RowRouting route(*model, {"customer-a", lora::kBaseOnly, "customer-b", "customer-a"});
//     auto logits = model->forward(ids);  // row 0 through customer-a, row 1 the base, ...
//   }                                     // the scope ends: the active adapters apply again
//
// While the scope lives, every drop-in layer (lora::Linear, lora::Embedding, lora::Conv1d/2d/3d)
// that this thread runs adds, to row b of its input (the first dimension), the branch of row b's
// adapter, ignoring the layer's active adapters; a layer without row b's adapter gives row b its
// base output. Adapters of different ranks mix in one pass: the layer stacks the A and B of the
// adapters in use, zero-padded to the largest rank, and computes every row's branch in one
// batched product (detail/routing.hpp), not one forward per sub-batch; rows grouped by adapter
// take one product per group (detail/adapter_host.hpp add_routed). Gradients flow to each
// row's adapter, so K adapters can also train in one pass.
//
// The scope is per thread: another thread's forward passes run with their own routing (or
// none). Everything is checked when the scope is made, and nothing runs half-routed: an unknown
// name, a plain torch::nn layer carrying adapters (its re-parametrized weight is shared by all
// rows), a merged adapter (it is in the shared base weight), adapters disabled on a layer, or a
// DoRA adapter in use (DoRA rescales the whole base output) each throw a ConfigError that says
// what to do. A layer whose input's first dimension is not the number of routed rows throws a
// ShapeError at forward().
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "detail/layers.hpp"
#include "detail/routing.hpp"
#include "error.hpp"

namespace lora {

/// The name that routes a row to the base model alone. (Adapter names are never empty.)
inline const std::string kBaseOnly;

/// Routes each row of the forward passes this thread runs while it lives (see the top).
class RowRouting {
 public:
  /// Row b of every batch uses adapter `rows[b]` (kBaseOnly: none).
  RowRouting(torch::nn::Module& model, const std::vector<std::string>& rows) {
    if (rows.empty())
      throw ConfigError("lora::RowRouting: no rows given. Name one adapter (or lora::kBaseOnly) per row of the batch.");
    std::set<std::string> known;
    const auto layers = detail::layers_of(model);
    for (const auto& l : layers)
      if (l.host)
        for (const auto& n : l.host->adapter_names()) known.insert(n);
    std::set<std::string> used;
    for (size_t b = 0; b < rows.size(); ++b) {
      if (rows[b] == kBaseOnly) continue;
      if (!known.count(rows[b]))
        throw ConfigError(detail::str("lora::RowRouting: row ", b, " names adapter '", rows[b],
                                      "', which no layer of the model has; the model has ",
                                      known.empty() ? std::string("no adapters") : detail::quoted_list({known.begin(), known.end()}),
                                      ". Use one of those, or lora::kBaseOnly (\"\") for the base model alone."));
      used.insert(rows[b]);
    }
    for (const auto& l : layers) check_layer(l, used);
    state_.names.assign(used.begin(), used.end());
    for (const auto& r : rows) {
      const auto it = std::find(state_.names.begin(), state_.names.end(), r);
      state_.row_name.push_back(it == state_.names.end() ? -1 : it - state_.names.begin());
    }
    previous_ = detail::routing_slot();
    detail::routing_slot() = &state_;
  }
  template <typename M>
  RowRouting(torch::nn::ModuleHolder<M>& model, const std::vector<std::string>& rows) : RowRouting(*model, rows) {}

  /// Restores the routing this thread had before (scopes nest).
  ~RowRouting() { detail::routing_slot() = previous_; }
  RowRouting(const RowRouting&) = delete;
  RowRouting& operator=(const RowRouting&) = delete;

  /// The number of rows each batch must have.
  size_t rows() const { return state_.row_name.size(); }

 private:
  static void check_layer(const detail::Layer& l, const std::set<std::string>& used) {
    if (!l.host) return;
    const auto names = l.host->adapter_names();
    if (names.empty()) return;
    if (!l.drop_in) {
      throw ConfigError(detail::str(
          "lora::RowRouting: layer '", l.path, "' is a plain torch::nn::", l.kind->name(), " carrying adapters ",
          detail::quoted_list(names), ": they re-parametrize its weight, which every row shares, so its rows cannot "
          "use different adapters. Declare the layer as the library's drop-in (lora::", l.kind->name(),
          ") to route rows, or remove its adapters."));
    }
    if (!l.host->adapters_enabled())
      throw ConfigError(detail::str("lora::RowRouting: adapters are disabled on layer '", l.path,
                                    "' (ModelAdapter::disable). Enable them, or route its rows to lora::kBaseOnly."));
    for (const auto& n : names) {
      const auto& a = l.host->adapter(n);
      if (a.merged())
        throw ConfigError(detail::str("lora::RowRouting: adapter '", n, "' is merged into layer '", l.path,
                                      "''s weight, which every row shares. Unmerge it first (ModelAdapter::unmerge)."));
      if (used.count(n) && a.dora())
        throw ConfigError(detail::str("lora::RowRouting: adapter '", n, "' on layer '", l.path,
                                      "' is a DoRA adapter, which rescales the whole base output: per-row routing "
                                      "supports plain LoRA adapters. Serve its rows in a batch of their own with the "
                                      "adapter active (ModelAdapter::activate)."));
    }
    if (const auto why = l.kind->unroutable(); !why.empty())
      throw ConfigError(detail::str("lora::RowRouting: layer '", l.path, "' (", l.kind->name(), ") cannot route rows: ",
                                    why, "."));
  }

  detail::Routing state_;
  const detail::Routing* previous_ = nullptr;
};

}  // namespace lora

// lora::add_weighted_adapter(model, {{name, weight}, ...}, new_name, options): a new adapter made
// of weighted existing adapters of the same model, as PEFT's LoraModel.add_weighted_adapter
// (methods "cat", "linear" and "svd"). It is an adapter like any other: a ModelAdapter handle,
// trainable, mergeable, servable per row, and peft::save writes it.
//
// Every adapter is a pair of matrices on a matrix view M (out_m, in_m) of its layer's weight
// (detail/kind.hpp): A_i (r_i, in_m), B_i (out_m, r_i), scale s_i, delta_i = s_i B_i A_i. On each
// layer, with c_i = w_i s_i for the sources that layer carries:
//   cat     A = [A_1; A_2; ...] (sum of the r_i rows), B = [c_1 B_1, c_2 B_2, ...]: exactly
//           delta = sum_i c_i B_i A_i. The rank is the sum of the sources' ranks on that layer,
//           and may exceed min(in_m, out_m) (allowed).
//   linear  PEFT's "linear": every source must have the same rank r on the layer;
//           A = sum_i sign(c_i) sqrt|c_i| A_i, B = sum_i sqrt|c_i| B_i, rank r. Then
//           B A = sum_i c_i B_i A_i + sum_{i != j} sqrt|c_i| sign(c_j) sqrt|c_j| B_i A_j:
//           NOT the weighted sum of the deltas (the cross terms B_i A_j remain) unless only one
//           source sits on the layer. Kept for PEFT parity; cat and svd are exact or optimal.
//   svd     D = sum_i c_i B_i A_i computed in float32 (float64 if the sources are), then its
//           truncated SVD D ~ U_r S_r V_r^T: B = U_r S_r, A = V_r^T. The best rank-r
//           approximation of D (Eckart-Young): the Frobenius error is sqrt(sum of the dropped
//           sigma^2), zero when r >= rank(D) (then it equals cat within float rounding).
//           CombineOptions::rank, at most min(in_m, out_m) on every layer; 0 (default) takes
//           the largest source rank on each layer, capped at min(in_m, out_m) (PEFT's
//           svd_rank=None).
// The new adapter has scale 1 (alpha = r under alpha / r). A layer carrying only some of the
// sources gets the combination of those it carries (the others count as zero there); a layer
// carrying none gets no new adapter. The weights may be negative (task arithmetic: subtract an
// adapter) or zero.
//
// Everything is checked, and the new tensors computed, before any layer changes: unknown source
// names (the message lists the adapters the model has), a new name that exists already, DoRA
// sources (a DoRA adapter rescales the whole weight; it is no low-rank delta), linear with unequal
// ranks, an svd rank that does not fit: ConfigError, nothing changed. Merged sources are fine
// (their A and B are read); the sources stay as they are. As inject() does, the new adapter is
// created active beside the adapters already active on its layers: call activate() on the handle
// to serve it alone. It is created with requires_grad on its A and B; no other parameter's
// requires_grad changes. Not synchronised: no forward pass may run on the model meanwhile.
#pragma once

#include <c10/core/ScalarType.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "config.hpp"
#include "detail/layers.hpp"
#include "detail/match.hpp"
#include "error.hpp"
#include "init.hpp"
#include "layer_adapter.hpp"
#include "model.hpp"
#include "model_adapter.hpp"
#include "scaling.hpp"

namespace lora {

/// How add_weighted_adapter() combines the sources on each layer (see the top).
enum class CombineMethod {
  cat,     ///< exact: the sources side by side, rank = the sum of their ranks
  linear,  ///< PEFT's "linear": weighted sums of the A's and of the B's (not exact; equal ranks)
  svd,     ///< the exact weighted delta, truncated to `rank` by an SVD (optimal in Frobenius norm)
};

struct CombineOptions {
  CombineMethod method = CombineMethod::cat;
  /// svd only: the new adapter's rank on every layer (at most min(in_m, out_m) of each); 0: the
  /// largest source rank on each layer, capped at min(in_m, out_m). Must stay 0 for cat and linear.
  int64_t rank = 0;
};

namespace detail {

inline const char* combine_method_name(CombineMethod m) {
  return m == CombineMethod::cat ? "cat" : m == CombineMethod::linear ? "linear" : "svd";
}

/// One source on one layer, with its weight.
struct CombineSource {
  std::string name;
  const LayerAdapter* adapter;
  double weight;
};

/// The new adapter on one layer: where, how it is created, and A (r, in_m), B (out_m, r) as
/// matrices at scale 1.
struct CombinedLayer {
  Layer layer;
  LayerAdapterSpec spec;
  std::vector<CombineSource> sources;
  torch::Tensor A, B;
};

/// A and B of the combination of `src` on one layer (see the top), in `dtype`, rank `rank`.
inline std::pair<torch::Tensor, torch::Tensor> combine_on_layer(const std::vector<CombineSource>& src,
                                                                CombineMethod method, int64_t rank,
                                                                torch::Dtype dtype) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> As, Bs;
  std::vector<double> c;
  for (const auto& s : src) {
    As.push_back(a_matrix(*s.adapter).detach().to(dtype));  // (r_i, in_m)
    Bs.push_back(b_matrix(*s.adapter).detach().to(dtype));  // (out_m, r_i)
    c.push_back(s.weight * s.adapter->scale);
  }
  if (method == CombineMethod::cat) {
    for (size_t i = 0; i < Bs.size(); ++i) Bs[i] = Bs[i] * c[i];
    return {torch::cat(As, 0), torch::cat(Bs, 1)};
  }
  if (method == CombineMethod::linear) {
    auto A = torch::zeros_like(As[0]), B = torch::zeros_like(Bs[0]);
    for (size_t i = 0; i < As.size(); ++i) {
      const double root = std::sqrt(std::abs(c[i]));
      A.add_(As[i], c[i] < 0 ? -root : root);  // the sign on A only, as PEFT
      B.add_(Bs[i], root);
    }
    return {A, B};
  }
  auto D = torch::zeros({Bs[0].size(0), As[0].size(1)}, As[0].options());  // (out_m, in_m)
  for (size_t i = 0; i < As.size(); ++i) D.addmm_(Bs[i], As[i], /*beta=*/1, /*alpha=*/c[i]);
  const auto usv = at::linalg_svd(D, /*full_matrices=*/false);
  const auto& U = std::get<0>(usv);   // (out_m, k)
  const auto& S = std::get<1>(usv);   // (k)
  const auto& Vh = std::get<2>(usv);  // (k, in_m)
  return {Vh.narrow(0, 0, rank).contiguous(), (U.narrow(1, 0, rank) * S.narrow(0, 0, rank)).contiguous()};
}

}  // namespace detail

/// Adds adapter `new_name` to `model`: on every layer that carries at least one of the named
/// adapters, the combination of those it carries with the given weights, by options.method (see
/// the top). Returns its handle (as inject() returns one; its config() describes it, so
/// peft::save writes it). Everything is checked first; on error the model is unchanged.
inline ModelAdapter add_weighted_adapter(torch::nn::Module& model,
                                         const std::vector<std::pair<std::string, double>>& adapters_and_weights,
                                         const std::string& new_name, const CombineOptions& options = {}) {
  using detail::str;
  const std::string fn = "lora::add_weighted_adapter";
  const std::string method = detail::combine_method_name(options.method);
  if (adapters_and_weights.empty())
    throw ConfigError(fn + ": no adapters to combine. Give one or more {name, weight} pairs.");
  if (new_name.empty() || new_name.find('.') != std::string::npos)
    throw ConfigError(str(fn, ": the new adapter's name '", new_name,
                          "' is invalid: it must be non-empty and contain no '.'."));
  if (options.rank < 0 || (options.method != CombineMethod::svd && options.rank != 0))
    throw ConfigError(str(fn, ": CombineOptions::rank is ", options.rank, " with method ", method,
                          "; it is the rank of the svd method only (0: the largest source rank). Leave it 0 for cat "
                          "(whose rank is the sum of the sources' ranks) and linear (the sources' common rank)."));
  std::set<std::string> seen;
  for (const auto& [name, w] : adapters_and_weights) {
    if (!std::isfinite(w))
      throw ConfigError(str(fn, ": the weight of adapter '", name, "' is ", w, "; weights must be finite."));
    if (!seen.insert(name).second)
      throw ConfigError(str(fn, ": adapter '", name, "' is named twice; give each adapter one weight."));
  }

  // Which adapters the model has.
  const auto layers = detail::layers_of(model);
  std::set<std::string> known;
  for (const auto& l : layers)
    for (const auto& n : l.adapter_names()) known.insert(n);
  if (known.count(new_name))
    throw ConfigError(str(fn, ": the model already has an adapter named '", new_name,
                          "'. Choose a new name, or remove() that adapter first."));
  for (const auto& [name, w] : adapters_and_weights)
    if (!known.count(name))
      throw ConfigError(str(fn, ": the model has no adapter named '", name, "'; it has: ",
                            detail::quoted_list(std::vector<std::string>(known.begin(), known.end())), "."));

  // Per layer: the sources it carries, the new rank, the spec; every check before any change.
  std::vector<detail::CombinedLayer> plan;
  for (const auto& l : layers) {
    detail::CombinedLayer p;
    p.layer = l;
    for (const auto& [name, w] : adapters_and_weights) {
      if (!l.has_adapter(name)) continue;
      const auto& a = l.adapter(name);
      if (a.dora())
        throw ConfigError(str(fn, ": adapter '", name, "' is a DoRA adapter (on layer '", l.path,
                              "'): its magnitude rescales the whole weight, so it is no low-rank delta and cannot "
                              "be combined. Combine plain LoRA adapters, or merge() the DoRA adapter instead."));
      p.sources.push_back({name, &a, w});
    }
    if (p.sources.empty()) continue;
    const int64_t in_m = l.in_features(), out_m = l.out_features(), limit = std::min(in_m, out_m);
    int64_t rank = 0, largest = 0;
    for (const auto& s : p.sources) {
      rank += s.adapter->rank;
      largest = std::max(largest, s.adapter->rank);
    }
    if (options.method == CombineMethod::linear) {
      for (const auto& s : p.sources)
        if (s.adapter->rank != p.sources.front().adapter->rank) {
          std::string ranks;
          for (const auto& t : p.sources) ranks += str(ranks.empty() ? "" : ", ", "'", t.name, "' r=", t.adapter->rank);
          throw ConfigError(str(fn, ": method linear needs the same rank for every adapter on a layer, but layer '",
                                l.path, "' has ", ranks, ". Use method cat (exact, any ranks) or svd (any ranks, a "
                                "rank of your choice)."));
        }
      rank = largest;
    } else if (options.method == CombineMethod::svd) {
      if (options.rank > limit)
        throw ConfigError(str(fn, ": svd rank ", options.rank, " does not fit layer '", l.path, "' (", out_m, " x ",
                              in_m, " as a matrix, ", l.kind->name(), "): it must be at most ", limit,
                              ". Lower CombineOptions::rank, or leave it 0 (the largest source rank on each layer)."));
      rank = options.rank > 0 ? options.rank : std::min(largest, limit);
    }
    auto& s = p.spec;
    s.rank = rank;
    s.alpha = static_cast<double>(rank);  // s = alpha / r = 1
    s.scaling = scaling::alpha_over_rank();
    s.dropout = p.sources.front().adapter->dropout;
    s.init = init::custom("combined", [](InitContext&) {});  // A = B = 0 until the copy below
    s.allow_rank_above_min = true;  // cat: the sum of the ranks may exceed min(in_m, out_m)
    // The sources' dtype: float32 sources on a half-precision base stay float32.
    s.autocast_adapter_dtype = p.sources.front().adapter->A.scalar_type() != l.weight().scalar_type();
    l.check(s);
    plan.push_back(std::move(p));
  }
  if (plan.empty())  // every known name is on some layer; defensive
    throw ConfigError(str(fn, ": no layer carries any of the adapters to combine."));

  // The new A and B of every layer, computed before anything changes.
  for (auto& p : plan) {
    auto dtype = torch::kFloat;
    for (const auto& s : p.sources) dtype = c10::promoteTypes(dtype, s.adapter->A.scalar_type());
    std::tie(p.A, p.B) = detail::combine_on_layer(p.sources, options.method, p.spec.rank, dtype);
    // The kind's own constraints on an adapter (an Embedding's padding column stays zero).
    auto scratch = torch::zeros({1, p.A.size(1)}, p.A.options());
    p.layer.kind->after_init(p.A, p.B, scratch, scratch);
  }

  // Apply: add each layer's adapter, then copy its A and B in (undone if anything throws).
  std::vector<detail::Layer> adapted;
  std::vector<LayerInfo> infos;
  try {
    for (auto& p : plan) {
      detail::Layer l = p.layer;
      l.add(new_name, p.spec);
      adapted.push_back(l);
      const auto& a = l.adapter(new_name);
      {
        torch::NoGradGuard no_grad;
        auto A = a.A, B = a.B;
        A.copy_(p.A.reshape(A.sizes()));
        B.copy_(p.B.reshape(B.sizes()));
      }
      infos.push_back({l.path, l.in_features(), l.out_features(), p.spec.rank, p.spec.alpha, p.spec.scale(),
                       l.drop_in ? LayerKind::drop_in : LayerKind::reparametrized, l.kind->name()});
    }
  } catch (...) {
    for (const auto& l : adapted) l.remove(new_name);
    throw;
  }

  // A Config that describes the new adapter (as peft::load builds one): each layer by its full
  // path, its rank and alpha = rank.
  Config cfg;
  cfg.adapter_name = new_name;
  cfg.targets.clear();
  cfg.rank = plan.front().spec.rank;
  cfg.alpha = static_cast<double>(cfg.rank);
  cfg.scaling = scaling::alpha_over_rank();
  cfg.dropout = plan.front().spec.dropout;  // 0 below if the layers' dropouts differ (no per-layer field)
  cfg.autocast_adapter_dtype = plan.front().spec.autocast_adapter_dtype;
  for (const auto& p : plan) {
    const auto key = "^" + detail::regex_escape(p.layer.path);
    cfg.targets.push_back("re:" + detail::regex_escape(p.layer.path));
    if (p.spec.rank != cfg.rank) {
      cfg.rank_pattern[key] = p.spec.rank;
      cfg.alpha_pattern[key] = static_cast<double>(p.spec.rank);
    }
    cfg.allow_rank_above_min |= p.spec.rank > std::min(p.layer.in_features(), p.layer.out_features());
  }
  for (const auto& p : plan)
    if (p.spec.dropout != plan.front().spec.dropout) cfg.dropout = 0;
  int64_t total = 0;
  for (const auto& t : unique_parameters(model)) total += t.numel();
  auto handle = detail::ModelAdapterAccess::make(new_name, std::move(adapted), std::move(infos),
                                                 std::vector<std::pair<std::string, torch::Tensor>>{}, total, cfg);
  handle.sync();
  return handle;
}

/// add_weighted_adapter() for a module holder (a TORCH_MODULE type).
template <typename M>
ModelAdapter add_weighted_adapter(torch::nn::ModuleHolder<M>& model,
                                  const std::vector<std::pair<std::string, double>>& adapters_and_weights,
                                  const std::string& new_name, const CombineOptions& options = {}) {
  return add_weighted_adapter(*model, adapters_and_weights, new_name, options);
}

}  // namespace lora

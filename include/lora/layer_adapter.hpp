// One adapter on one layer: what it takes to create it (LayerAdapterSpec) and what it holds
// (LayerAdapter: A and B, for a Linear layer (r, in) and (out, r), in the shapes its layer kind
// stores them (detail/kind.hpp), and, for DoRA, the magnitude m (out)). The tensors are
// registered under the layer as "lora_A.<name>.weight", "lora_B.<name>.weight" (Embedding:
// "lora_embedding_A/B") and "lora_magnitude_vector.<name>.weight" (PEFT's in-memory names). The
// drop-in layers and inject() create adapters; the layer kind says how they apply and merge,
// and each adapter's variant (plain LoRA or DoRA, lora/detail/variant.hpp) what it adds.
// (lora::Adapter and lora::AdapterSpec until 0.1: deprecated aliases, kept for one release.)
#pragma once

#include <torch/autograd.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "detail/kind.hpp"
#include "error.hpp"
#include "init.hpp"
#include "scaling.hpp"

namespace lora {

namespace detail {
class Variant;
class LayerAdapterSet;
}  // namespace detail

/// What it takes to create one adapter on one layer (inject() fills it from Config; the drop-in
/// layers' add_adapter() takes one).
struct LayerAdapterSpec {
  int64_t rank = 8;
  double alpha = 8;
  /// Turns alpha and rank into the adapter's scale s (scale()).
  Scaling scaling = scaling::alpha_over_rank();
  double dropout = 0;      ///< dropout on the LoRA branch's input, in training mode only
  Init init = init::uniform_zero();
  uint64_t seed = 0;       ///< the generator seed for this adapter on this layer
  /// Allow rank > min(in, out): B A then has rank min(in, out), which wastes parameters but
  /// works (PEFT allows it silently; e.g. r = 128 on a 768 -> 4 classifier needs it).
  bool allow_rank_above_min = false;
  /// DoRA (Liu et al. 2024): also learn a magnitude per output row (lora::Linear layers only).
  bool use_dora = false;
  /// On a float16 / bfloat16 base, create the adapter in float32 (Config::autocast_adapter_dtype).
  bool autocast_adapter_dtype = true;

  /// The dtype of an adapter with this spec on a base weight of dtype `base`.
  torch::Dtype dtype_for(torch::Dtype base) const {
    return autocast_adapter_dtype && (base == torch::kHalf || base == torch::kBFloat16) ? torch::kFloat : base;
  }

  /// s = scaling(alpha, rank): the one place an adapter's scale is resolved (NaN without a
  /// scaling function, which the layer's checks refuse).
  double scale() const { return scaling.scale ? scaling.scale(alpha, rank) : std::nan(""); }
};

/// One adapter on one layer: its tensors and settings, read through the layer (adapter(name))
/// or the model's handle. The layer that holds it creates, merges and removes it.
class LayerAdapter {
 public:
  torch::Tensor A;  ///< (r, in) on a Linear layer; its kind's shape elsewhere (Conv2d (r, in, kh, kw))
  torch::Tensor B;  ///< (out, r) on a Linear layer; its kind's shape elsewhere (Conv2d (out, r, 1, 1))
  /// DoRA's magnitude m (out), one value per output row; undefined for plain LoRA.
  torch::Tensor magnitude;
  int64_t rank = 0;
  double alpha = 0;
  double scale = 1;  ///< s now: as the spec's scaling policy resolved it, unless changed at run time
  double dropout = 0;

  bool dora() const { return magnitude.defined(); }
  /// Whether it is merged into the base weight (the layer's merge()).
  bool merged() const { return merged_; }
  /// Its variant (plain LoRA or DoRA: detail/variant.hpp), which says how it is created,
  /// applied and merged.
  const detail::Variant& variant() const { return *variant_; }
  /// Its layer's kind (Linear, Embedding, Conv2d, ...: detail/kind.hpp).
  const detail::Kind& kind() const { return *kind_; }
  /// The scale it was created with (its spec's scale()), which restore_scale() brings back.
  double configured_scale() const { return configured_scale_; }

  /// What this adapter adds to the base weight (before DoRA's row scaling), in the weight's
  /// layout: s * B A (out, in) on a Linear layer, s (B A)^T (num, dim) on an Embedding,
  /// (out, in, k...) on a convolution, the slice's rows on an attention in-projection slice.
  torch::Tensor delta_weight() const { return kind_->delta(*this); }

 private:
  friend class detail::LayerAdapterSet;  // creates, merges and unmerges it
  bool merged_ = false;
  double configured_scale_ = 1;
  const detail::Variant* variant_ = nullptr;
  std::shared_ptr<const detail::Kind> kind_;
};

namespace detail {

inline torch::Tensor a_matrix(const LayerAdapter& a) { return a.A.dim() == 2 ? a.A : a.A.reshape({a.A.size(0), -1}); }
inline torch::Tensor b_matrix(const LayerAdapter& a) { return a.B.dim() == 2 ? a.B : a.B.reshape({a.B.size(0), -1}); }
inline torch::Tensor Kind::delta(const LayerAdapter& a) const { return torch::mm(b_matrix(a), a_matrix(a)).mul_(a.scale); }

/// Every check of one adapter spec against its layer (`path`, of kind `kind`, whose matrix view
/// is (out_m, in_m): detail/kind.hpp), in one place: inject() runs it on every selected layer
/// before changing any, and the drop-in layers' add_adapter on their own. `reparametrized`: the
/// layer is a plain torch::nn layer (the compatibility path), whose re-parametrized weight never
/// sees the input, so no dropout and no DoRA.
inline void check_adapter_spec(const LayerAdapterSpec& spec, const std::string& path, const Kind& kind, int64_t in_m,
                               int64_t out_m, bool reparametrized) {
  const auto limit = std::min(in_m, out_m);
  if (spec.rank <= 0 || (spec.rank > limit && (!spec.allow_rank_above_min || spec.init.rank_within_min)))
    throw ConfigError(str("lora: rank ", spec.rank, " does not fit layer '", path, "' (", out_m, " x ", in_m,
                          kind.name() == "Linear" ? "" : " as a matrix, " + kind.name(),
                          "): it must be at least 1 and at most ", limit,
                          spec.init.rank_within_min ? " with init '" + spec.init.name + "'" : std::string(),
                          ". Lower Config::rank, exclude the layer, give it a smaller rank with rank_pattern[\"",
                          path.substr(path.rfind('.') + 1), "\"], or set Config::allow_rank_above_min."));
  if (!std::isfinite(spec.scale()))
    throw ConfigError(str("lora: the scale of layer '", path, "' is ", spec.scale(), " (scaling '", spec.scaling.name,
                          "', alpha ", spec.alpha, ", rank ",
                          spec.rank, "); it must be finite. Use a finite alpha and scaling policy."));
  if (!(spec.dropout >= 0 && spec.dropout < 1))
    throw ConfigError(str("lora: dropout must be in [0, 1), got ", spec.dropout, " for layer '", path, "'."));
  const std::string plain = "a plain torch::nn::" + kind.name();
  if (reparametrized && spec.dropout > 0)
    throw ConfigError(str("lora: layer '", path, "' is ", plain, "; its adapter re-parametrizes the ",
                          "weight and never sees the input, so LoRA dropout ", spec.dropout,
                          " cannot be applied. Set Config::dropout = 0 or declare the layer as lora::",
                          kind.name(), "."));
  if (!reparametrized && spec.dropout > 0 && !kind.supports_dropout())
    throw ConfigError(str("lora: layer '", path, "' is an ", kind.name(), ", whose input is token ids: LoRA dropout ",
                          spec.dropout, " has nothing to act on (PEFT ignores it there). Set Config::dropout = 0, ",
                          "or exclude the layer."));
  if (reparametrized && spec.use_dora)
    throw ConfigError(str("lora: layer '", path, "' is ", plain, "; its adapter re-parametrizes the ",
                          "weight and never sees the input, so DoRA (use_dora) cannot be applied. Set "
                          "Config::use_dora = false or declare the layer as lora::",
                          kind.name(), "."));
  if (spec.use_dora && !kind.supports_dora())
    throw ConfigError(str("lora: layer '", path, "' is ", kind.name(), ": this library implements DoRA (use_dora) ",
                          "on Linear layers only (PEFT also has it for Embedding and convolutions). Set "
                          "Config::use_dora = false, or exclude the layer."));
}

}  // namespace detail
using Adapter [[deprecated("renamed lora::LayerAdapter (one adapter on one layer)")]] = LayerAdapter;
using AdapterSpec [[deprecated("renamed lora::LayerAdapterSpec; its scale is scale(), resolved from alpha, rank and scaling")]] =
    LayerAdapterSpec;

}  // namespace lora

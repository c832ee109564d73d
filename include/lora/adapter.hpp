// One adapter on one layer: what it takes to create it (AdapterSpec) and what it holds
// (Adapter: A (r, in), B (out, r) and, for DoRA, the magnitude m (out)). The tensors are
// registered under the layer as "lora_A.<name>.weight", "lora_B.<name>.weight" and
// "lora_magnitude_vector.<name>.weight" (PEFT's in-memory names). lora::Linear and inject()
// create adapters; functional.hpp has the formulas that apply them, and each adapter's
// variant (plain LoRA or DoRA, lora/detail/variant.hpp) says which of them it uses.
#pragma once

#include <torch/autograd.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "error.hpp"
#include "init.hpp"

namespace lora {

namespace detail {
class Variant;
}  // namespace detail

/// What it takes to create one adapter on one layer (inject() fills it from Config).
struct AdapterSpec {
  int64_t rank = 8;
  double alpha = 8;
  double scale = 1;        ///< s, already resolved by the scaling policy
  double dropout = 0;      ///< dropout on the LoRA branch's input, in training mode only
  Init init = init::uniform_zero();
  uint64_t seed = 0;       ///< the generator seed for this adapter on this layer
  /// Allow rank > min(in, out): B A then has rank min(in, out), which wastes parameters but
  /// works (PEFT allows it silently; e.g. r = 128 on a 768 -> 4 classifier needs it).
  bool allow_rank_above_min = false;
  /// DoRA (Liu et al. 2024): also learn a magnitude per output row (lora::Linear layers only).
  bool use_dora = false;
};

/// One adapter on one layer.
struct Adapter {
  torch::Tensor A;  ///< (r, in)
  torch::Tensor B;  ///< (out, r)
  int64_t rank = 0;
  double alpha = 0;
  double scale = 1;
  double dropout = 0;
  bool merged = false;  ///< merged into the base weight (lora::Linear::merge)
  /// DoRA's magnitude m (out), one value per output row; undefined for plain LoRA.
  torch::Tensor magnitude;
  /// Its variant (plain LoRA or DoRA), which the layer asks how to create, apply and merge
  /// the adapter; set by the layer that creates it (internal).
  const detail::Variant* variant = nullptr;

  bool dora() const { return magnitude.defined(); }

  /// s * B A, (out, in): what this adapter adds to the base weight (before DoRA's row scaling).
  torch::Tensor delta_weight() const { return torch::mm(B, A).mul_(scale); }
};

namespace detail {

/// Every check of one adapter spec against its layer (`path`, weight (out, in)), in one place:
/// inject() runs it on every selected layer before changing any, and lora::Linear::add_adapter
/// on its own. `torch_linear`: the layer is a plain torch::nn::Linear (compatibility path),
/// whose re-parametrized weight never sees the input, so no dropout and no DoRA.
inline void check_adapter_spec(const AdapterSpec& spec, const std::string& path, int64_t in, int64_t out,
                               bool torch_linear) {
  const auto limit = std::min(in, out);
  if (spec.rank <= 0 || (spec.rank > limit && (!spec.allow_rank_above_min || spec.init.rank_within_min)))
    throw ConfigError(str("lora: rank ", spec.rank, " does not fit layer '", path, "' (", out, " x ", in,
                          "): it must be at least 1 and at most ", limit,
                          spec.init.rank_within_min ? " with init '" + spec.init.name + "'" : std::string(),
                          ". Lower Config::rank, exclude the layer, give it a smaller rank with rank_pattern[\"",
                          path.substr(path.rfind('.') + 1), "\"], or set Config::allow_rank_above_min."));
  if (!std::isfinite(spec.scale))
    throw ConfigError(str("lora: the scale of layer '", path, "' is ", spec.scale, " (alpha ", spec.alpha, ", rank ",
                          spec.rank, "); it must be finite. Use a finite alpha and scaling policy."));
  if (!(spec.dropout >= 0 && spec.dropout < 1))
    throw ConfigError(str("lora: dropout must be in [0, 1), got ", spec.dropout, " for layer '", path, "'."));
  if (torch_linear && spec.dropout > 0)
    throw ConfigError(str("lora: layer '", path, "' is a plain torch::nn::Linear; its adapter re-parametrizes the ",
                          "weight and never sees the input, so LoRA dropout ", spec.dropout,
                          " cannot be applied. Set Config::dropout = 0 or declare the layer as lora::Linear."));
  if (torch_linear && spec.use_dora)
    throw ConfigError(str("lora: layer '", path, "' is a plain torch::nn::Linear; its adapter re-parametrizes the ",
                          "weight and never sees the input, so DoRA (use_dora) cannot be applied. Set "
                          "Config::use_dora = false or declare the layer as lora::Linear."));
}

}  // namespace detail
}  // namespace lora

// Scaling policies: the factor s in y = x W^T + b + s * (x A^T) B^T, as a function of the
// configured alpha and the layer's rank r.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "detail/match.hpp"
#include "error.hpp"

namespace lora {

/// A named rule s = f(alpha, r). `effective_alpha` is the lora_alpha that PEFT's
/// default alpha/r rule would need for the same s (used when exporting adapters).
struct Scaling {
  std::string name;
  std::function<double(double alpha, int64_t rank)> scale;

  /// PEFT's `use_rslora` flag is the only non-default rule PEFT stores; every other rule
  /// is exported as alpha/r with lora_alpha = s * r.
  bool is_rslora = false;
};

namespace scaling {

/// s = alpha / r (PEFT's default and the LoRA paper's). With alpha fixed, the product s * B A
/// has a rank-independent scale at init, so the optimal LR barely moves with r.
inline Scaling alpha_over_rank() {
  return {"alpha-over-rank", [](double alpha, int64_t r) { return alpha / static_cast<double>(r); }};
}

/// s = alpha, no 1/r (original LoRA code before the 1/r factor; "constant alpha").
/// Larger ranks then learn faster at the same LR.
inline Scaling constant_alpha() {
  return {"alpha", [](double alpha, int64_t) { return alpha; }};
}

/// s = alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023; PEFT's use_rslora). Keeps the update's
/// magnitude stable when the rank is large.
inline Scaling alpha_over_sqrt_rank() {
  Scaling s{"alpha-over-sqrt-rank",
            [](double alpha, int64_t r) { return alpha / std::sqrt(static_cast<double>(r)); }};
  s.is_rslora = true;
  return s;
}

/// Rank-proportional alpha: alpha = k * r with s = alpha / r, so s = k at every rank
/// ("alpha = 10r" is rank_proportional(10)). The configured alpha is ignored.
inline Scaling rank_proportional(double k) {
  return {"rank-proportional(" + std::to_string(k) + ")", [k](double, int64_t) { return k; }};
}

/// Your own rule, e.g. custom("half", [](double a, int64_t r) { return a / (2.0 * r); }).
inline Scaling custom(std::string name, std::function<double(double, int64_t)> fn) {
  return {std::move(name), std::move(fn)};
}

/// The names by_name() knows: each policy's Scaling::name.
inline const std::vector<std::string>& names() {
  static const std::vector<std::string> n = {"alpha-over-rank", "alpha", "alpha-over-sqrt-rank"};
  return n;
}

/// The policy called `name` (one of names()); rank_proportional and custom take arguments and
/// are not looked up by name. Throws ConfigError naming the value and the names.
inline Scaling by_name(const std::string& name) {
  if (name == "alpha-over-rank") return alpha_over_rank();
  if (name == "alpha") return constant_alpha();
  if (name == "alpha-over-sqrt-rank") return alpha_over_sqrt_rank();
  throw ConfigError(detail::str("lora::scaling::by_name: no scaling policy is called '", name, "'; use one of ",
                                detail::quoted_list(names()), "."));
}

}  // namespace scaling
}  // namespace lora

// Scaling policies: the factor s in y = x W^T + b + s * (x A^T) B^T, as a function of the
// configured alpha and the layer's rank r.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>

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

/// s = alpha / r (PEFT's default, the blog's and the seed study's). With alpha fixed, the
/// product s * B A has a rank-independent scale at init, so the optimal LR barely moves with r.
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

/// Rank-proportional alpha: alpha = k * r with s = alpha / r, so s = k at every rank (the
/// seed study's "alpha = 10r" is rank_proportional(10)). The configured alpha is ignored.
inline Scaling rank_proportional(double k) {
  return {"rank-proportional(" + std::to_string(k) + ")", [k](double, int64_t) { return k; }};
}

/// Your own rule, e.g. custom("half", [](double a, int64_t r) { return a / (2.0 * r); }).
inline Scaling custom(std::string name, std::function<double(double, int64_t)> fn) {
  return {std::move(name), std::move(fn)};
}

}  // namespace scaling
}  // namespace lora

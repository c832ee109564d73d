// Init policies: how A (r, in) and B (out, r) start, and, for PiSSA and OLoRA, how the base
// weight W (out, in) is changed so that the layer's output is unchanged at step 0.
#pragma once

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "detail/match.hpp"
#include "error.hpp"

namespace lora {

/// What an init policy sees and fills. Every tensor is a CPU float32 tensor; the library
/// copies the result to the layer's device and dtype, so a seed gives the same adapter on
/// every device.
struct InitContext {
  at::Tensor A;       ///< (r, in), zero on entry: fill it in place.
  at::Tensor B;       ///< (out, r), zero on entry: fill it in place.
  at::Tensor weight;  ///< (out, in), the base weight W; write it in place if `changes_base`.
  double scale = 1;   ///< s, from the scaling policy.
  int64_t rank = 0;   ///< r.
  /// The layer is an Embedding (A (r, num), B (dim, r) on W^T): PEFT initialises such adapters
  /// with A = 0 and B ~ N(0, 1) for its default and "gaussian" inits, and so do uniform_zero()
  /// and gaussian_zero() (B is then the random factor; the adapter still starts as a no-op).
  bool embedding = false;
  at::Generator generator;  ///< seeded from Config::seed, the layer's path and the adapter name.
};

/// A named init rule. `changes_base` says that `apply` rewrites `ctx.weight` (PiSSA, OLoRA);
/// `rank_within_min` that it needs r <= min(in, out) (a decomposition of W: PiSSA, OLoRA), even
/// where Config::allow_rank_above_min allows more.
struct Init {
  std::string name;
  std::function<void(InitContext&)> apply;
  bool changes_base = false;
  bool rank_within_min = false;
};

namespace detail {

/// An init that factors the base: `factor` gives B (out, r) and A (r, in) from W (as float64);
/// the base becomes W - s B A, so the output is unchanged at step 0. Held to r <= min(in, out).
template <typename Factor>
Init factoring_init(std::string name, Factor factor) {
  Init p{std::move(name), [factor](InitContext& c) {
           const auto W = c.weight.to(at::kDouble);
           const auto [B, A] = factor(W, c);  // (out, r), (r, in)
           c.A.copy_(A);
           c.B.copy_(B);
           c.weight.copy_(W - c.scale * B.mm(A));
         }};
  p.changes_base = true;
  p.rank_within_min = true;
  return p;
}

}  // namespace detail

namespace init {

/// A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0: PEFT's default (kaiming_uniform with a = sqrt(5)).
/// The adapter starts as an exact no-op and B = 0 acts as a warm-up. On an Embedding, PEFT's
/// default for embeddings: A = 0, B ~ N(0, 1).
inline Init uniform_zero() {
  return {"uniform-zero", [](InitContext& c) {
            if (c.embedding) {
              c.B.normal_(0.0, 1.0, c.generator);
              return;
            }
            const double bound = 1.0 / std::sqrt(static_cast<double>(c.A.size(1)));
            c.A.uniform_(-bound, bound, c.generator);
          }};
}

/// A ~ N(0, (1/r)^2), B = 0: PEFT's init_lora_weights="gaussian". Also an exact no-op at start.
/// On an Embedding, as PEFT: A = 0, B ~ N(0, 1).
inline Init gaussian_zero() {
  return {"gaussian-zero", [](InitContext& c) {
            if (c.embedding) {
              c.B.normal_(0.0, 1.0, c.generator);
              return;
            }
            c.A.normal_(0.0, 1.0 / static_cast<double>(c.rank), c.generator);
          }};
}

/// A, B ~ N(0, sigma^2). A known failure, for experiments: with sigma = 1 the initial update
/// s * B A is huge (the model starts far from the pretrained one) and fine-tuning collapses
/// to chance accuracy.
inline Init gaussian_gaussian(double sigma = 1.0) {
  if (!(sigma > 0) || !std::isfinite(sigma))
    throw ConfigError(detail::str("init::gaussian_gaussian: sigma must be a positive finite number, got ",
                                  sigma, ". Pass e.g. 1.0 or 0.02."));
  return {"gaussian-gaussian(" + std::to_string(sigma) + ")", [sigma](InitContext& c) {
            c.A.normal_(0.0, sigma, c.generator);
            c.B.normal_(0.0, sigma, c.generator);
          }};
}

/// A, B ~ N(0, sigma^2) as gaussian_gaussian(sigma), and W <- W - s B A, so that the adapted
/// layer starts exactly at the base (as PiSSA and OLoRA do): the gaussian init without its
/// random initial update. With it one can tell whether gaussian_gaussian's collapse comes from
/// that initial update or from the size of A and B during training.
inline Init gaussian_subtracted(double sigma = 1.0) {
  const auto gauss = gaussian_gaussian(sigma);  // checks sigma
  Init p{"gaussian-subtracted(" + std::to_string(sigma) + ")", [fill = gauss.apply](InitContext& c) {
           fill(c);
           c.weight.sub_(c.scale * c.B.to(at::kDouble).mm(c.A.to(at::kDouble)).to(c.weight.scalar_type()));
         }};
  p.changes_base = true;
  return p;
}


/// PiSSA (Meng et al. 2024): W = U S V^T, A = sqrt(S_r/s) V_r^T, B = U_r sqrt(S_r/s),
/// W <- W - s B A. The adapter holds the principal directions; output is unchanged at step 0.
inline Init pissa() {
  return lora::detail::factoring_init("pissa", [](const at::Tensor& W, const InitContext& c) {
    auto usv = at::linalg_svd(W, /*full_matrices=*/false);
    auto U = std::get<0>(usv).narrow(1, 0, c.rank);   // (out, r)
    auto S = std::get<1>(usv).narrow(0, 0, c.rank);   // (r)
    auto Vh = std::get<2>(usv).narrow(0, 0, c.rank);  // (r, in)
    auto root = (S / c.scale).sqrt();
    return std::make_pair(U * root.unsqueeze(0), root.unsqueeze(1) * Vh);  // B (out, r), A (r, in)
  });
}

/// OLoRA (Büyükakyüz 2024): W = Q R, B = Q[:, :r], A = R[:r], W <- W - s B A.
/// Orthonormal B; output is unchanged at step 0.
inline Init olora() {
  return lora::detail::factoring_init("olora", [](const at::Tensor& W, const InitContext& c) {
    auto qr = at::linalg_qr(W, "reduced");
    return std::make_pair(std::get<0>(qr).narrow(1, 0, c.rank), std::get<1>(qr).narrow(0, 0, c.rank));  // B, A
  });
}

/// Your own rule. `changes_base` must be true if `fn` writes ctx.weight; such a rule is also
/// held to r <= min(in, out) (Init::rank_within_min), as a decomposition of W would be.
inline Init custom(std::string name, std::function<void(InitContext&)> fn, bool changes_base = false) {
  return {std::move(name), std::move(fn), changes_base, changes_base};
}

/// The names by_name() knows, in the order of this file.
inline const std::vector<std::string>& names() {
  static const std::vector<std::string> n = {"uniform-zero", "gaussian-zero", "gaussian-gaussian", "gaussian-subtracted",
                                             "pissa", "olora"};
  return n;
}

/// The policy called `name` (one of names(); each policy's Init::name, without gaussian-gaussian's
/// and gaussian-subtracted's "(sigma)"); `sigma` is theirs. Throws ConfigError naming the value and the names.
inline Init by_name(const std::string& name, double sigma = 1.0) {
  if (name == "uniform-zero") return uniform_zero();
  if (name == "gaussian-zero") return gaussian_zero();
  if (name == "gaussian-gaussian") return gaussian_gaussian(sigma);
  if (name == "gaussian-subtracted") return gaussian_subtracted(sigma);
  if (name == "pissa") return pissa();
  if (name == "olora") return olora();
  throw ConfigError(detail::str("lora::init::by_name: no init policy is called '", name, "'; use one of ", detail::quoted_list(names()), "."));
}

}  // namespace init
}  // namespace lora

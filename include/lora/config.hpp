// lora::Config: what inject() adapts and how.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "error.hpp"
#include "init.hpp"
#include "scaling.hpp"

namespace lora {

struct Config {
  /// r: the rank of every adapter (override per layer with rank_pattern).
  int64_t rank = 8;
  /// alpha: the scaling policy turns (alpha, r) into the scale s (override with alpha_pattern).
  double alpha = 8;
  /// Dropout on the LoRA branch's input, in training mode only (lora::Linear layers only).
  double dropout = 0;

  /// Which layers get an adapter. Each entry is one of:
  ///  - "all-linear": every lora::Linear and torch::nn::Linear (see adapt_output_head);
  ///  - "re:<regex>": layers whose full path matches <regex> entirely (std::regex, ECMAScript);
  ///  - a name: layers whose path equals it or ends with "." + name, as PEFT matches
  ///    target_modules ("q_lin" matches "transformer.layer.0.attention.q_lin").
  /// A name or regex that matches no layer is an error naming the closest layer paths.
  std::vector<std::string> targets = {"all-linear"};
  /// Layers to leave out, in the same syntax (a pattern that matches no layer is an error).
  std::vector<std::string> exclude;
  /// With "all-linear": also adapt the output head? Off by default, as PEFT's "all-linear": the
  /// head maps to the task's labels or vocabulary, is often new (trained from scratch, better
  /// kept fully trainable with keep_trainable) or tied to the input embedding. Turn it on to give
  /// the head a low-rank update too. A head is a layer whose last path component is in
  /// output_heads.
  bool adapt_output_head = false;
  std::vector<std::string> output_heads = {"lm_head", "classifier", "score"};

  /// Modules whose own parameters stay trainable although they get no adapter (PEFT's
  /// modules_to_save), matched by name or suffix like targets.
  std::vector<std::string> keep_trainable;
  /// Freeze every parameter that is not an adapter's or kept trainable (the usual LoRA setup).
  bool freeze_base = true;
  /// rank > min(in, out) of a layer is an error unless this is set. Such an adapter works
  /// (B A then has rank min(in, out)) but wastes parameters; PEFT allows it silently, and one
  /// rank for every layer of a model with a small head (r = 128 on a 768 -> 4 classifier)
  /// needs it. Never for PiSSA/OLoRA, whose init needs r singular directions.
  bool allow_rank_above_min = false;

  /// A layer whose weight another layer shares (an output layer tied to the input embedding,
  /// as GPT-2's lm_head and wte) may be adapted without the other: the adapter then acts on the
  /// adapted layer only, and after merge() on both (PEFT's behaviour without
  /// ensure_weight_tying). Off: inject() refuses it with a ConfigError naming both layers.
  bool allow_untied_weights = false;

  Init init = init::uniform_zero();
  Scaling scaling = scaling::alpha_over_rank();
  /// Seed of the init policy: the same seed gives the same adapter on the same layer.
  uint64_t seed = 0;

  /// The adapter's name, for several adapters on one model ("default" as in PEFT).
  std::string adapter_name = "default";
  /// The name the per-layer init seeds derive from, if not adapter_name (""). An adapter
  /// added as "b" with seed_name "default" starts as the one the same Config gives "default"
  /// (e.g. several adapters trained in one pass that each reproduce a run of its own).
  std::string seed_name;

  /// DoRA (Liu et al. 2024, PEFT's use_dora): each adapted layer also learns a magnitude m per
  /// output row, initialised to the row norms of W + s B A, and computes
  /// y = (m / ||W + s B A||_row) (W + s B A) x + b with the norm detached from the gradient.
  /// lora::Linear layers only (a plain torch::nn::Linear gets a ConfigError).
  bool use_dora = false;

  /// Adapters on a float16 or bfloat16 base are created in float32 (PEFT's
  /// autocast_adapter_dtype): half-precision adapters train badly. forward() casts at the
  /// adapter branch's edges and merges compute in float32 and round once. false: adapters take
  /// the base weight's dtype. (A later model->to(dtype) converts adapters like any parameter.)
  bool autocast_adapter_dtype = true;

  /// Per-layer rank and alpha, as PEFT's rank_pattern / alpha_pattern: a key K applies to a
  /// layer whose path matches the regex "(.*\.)?(K)$"; the first matching key (in key order) wins.
  std::map<std::string, int64_t> rank_pattern;
  std::map<std::string, double> alpha_pattern;

  /// Throws ConfigError on values that can never work, before any layer is touched.
  void validate() const {
    if (rank <= 0)
      throw ConfigError(detail::str("lora::Config: rank must be positive, got ", rank,
                                    ". Typical values are 4 to 256."));
    if (!std::isfinite(alpha))
      throw ConfigError(detail::str("lora::Config: alpha must be a finite number, got ", alpha,
                                    ". Typical values: 8, 16, 32."));
    if (!(dropout >= 0 && dropout < 1))
      throw ConfigError(detail::str("lora::Config: dropout must be in [0, 1), got ", dropout, "."));
    if (targets.empty())
      throw ConfigError("lora::Config: targets is empty. Name the layers to adapt, e.g. {\"q_lin\", \"v_lin\"}, "
                        "or use {\"all-linear\"}.");
    if (!init.apply) throw ConfigError("lora::Config: init has no function. Use e.g. lora::init::uniform_zero().");
    if (!scaling.scale)
      throw ConfigError("lora::Config: scaling has no function. Use e.g. lora::scaling::alpha_over_rank().");
    for (const auto& kv : rank_pattern)
      if (kv.second <= 0)
        throw ConfigError(detail::str("lora::Config: rank_pattern['", kv.first, "'] = ", kv.second,
                                      " must be positive."));
    for (const auto& kv : alpha_pattern)
      if (!std::isfinite(kv.second))
        throw ConfigError(detail::str("lora::Config: alpha_pattern['", kv.first, "'] = ", kv.second,
                                      " must be finite."));
  }
};

}  // namespace lora

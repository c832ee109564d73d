// What a point of the sweep runs with, from the parsed Options: the grid of points (grid.hpp),
// the lora::Config of a LoRA point, and the torch::Device.
#pragma once

#include <torch/cuda.h>
#include <torch/types.h>

#include <lora/config.hpp>
#include <lora/init.hpp>
#include <lora/scaling.hpp>

#include <string>
#include <vector>

#include "errors.hpp"
#include "flag_values.hpp"
#include "grid.hpp"
#include "options.hpp"

namespace sweep {

/// The grid the options describe (grid.hpp); Options::extra becomes each point's extra.
inline std::vector<Point> build_grid(const Options& o) {
  GridSpec g;
  g.lrs = o.lrs;
  g.ranks = o.ranks;
  g.full_lrs = o.full_lrs;
  g.seeds = o.seeds;
  g.alpha = o.alpha;
  g.alpha_per_rank = o.alpha_per_rank;
  g.alphas = o.alphas;
  g.alpha_lrs = o.alpha_lrs;
  g.scaling = o.scaling;
  g.init = o.init;
  g.extra = o.extra;
  return build_grid(g);
}

/// The scaling policy called `name` (one of scaling_names()).
inline lora::Scaling scaling_policy(const std::string& name) {
  detail::one_of("--scaling", name, scaling_names());
  return lora::scaling::by_name(name);
}

/// The init policy called `name` (one of init_names()); `std` is gaussian-gaussian's sigma.
inline lora::Init init_policy(const std::string& name, double std) {
  detail::one_of("--init", name, init_names());
  return lora::init::by_name(name, std);
}

/// The lora::Config of LoRA point `p`: rank, alpha, scaling and init of the point; targets,
/// init sigma and DoRA from the options; the point's seed seeds the adapters.
inline lora::Config to_lora_config(const Options& o, const Point& p) {
  if (p.is_full())
    throw examples::Error("to_lora_config: point '" + key(p) + "' is full fine-tuning and has no LoRA config.");
  lora::Config c;
  c.rank = p.rank;
  c.alpha = p.alpha;
  c.scaling = scaling_policy(p.scaling);
  c.init = init_policy(p.init, o.init_std);
  c.targets = o.targets;
  // The study adapts the output head too (every Linear, as the seed study); the library's
  // default, like PEFT's, leaves it alone.
  c.adapt_output_head = true;
  c.seed = p.seed;
  c.use_dora = o.dora;
  // As the seed study (and PEFT): a rank above a layer's min(in, out) is allowed, e.g. r = 128
  // on DistilBERT's 768 -> 4 classifier (PiSSA/OLoRA still refuse it).
  c.allow_rank_above_min = true;
  // The study's lm_head experiment adapts GPT-2's lm_head alone, whose weight is wte's (tied):
  // the adapter acts at the output only (PEFT's behaviour without ensure_weight_tying), as the
  // seed's probable setting; the library refuses that unless asked.
  c.allow_untied_weights = true;
  return c;
}

/// The torch::Device of --device; throws examples::UsageError when CUDA is asked for but absent.
inline torch::Device device_of(const Options& o) {
  const torch::Device d(o.device);
  if (d.is_cuda() && !torch::cuda::is_available())
    throw examples::UsageError("--device: '" + o.device + "' asked for CUDA, but LibTorch sees no CUDA device. Use "
                               "--device cpu, or a CUDA build of LibTorch on a machine with a GPU.");
  if (d.is_cuda() && d.has_index() && d.index() >= static_cast<int>(torch::cuda::device_count()))
    throw examples::UsageError("--device: '" + o.device + "' does not exist; this machine has " +
                               std::to_string(torch::cuda::device_count()) + " CUDA device(s), cuda:0 upwards.");
  return d;
}

}  // namespace sweep

// lora_bench's figures: each one's field name, what it measures, its value and its target, the
// table printed at the end of a run, and the JSON file of --json.
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "options.hpp"

namespace bench {

/// One figure of the run.
struct Figure {
  std::string field, what;
  double value = NAN;
  std::string target;  ///< "<= 1.03", ">= 5", or "" (reported, no target)
  std::string status() const {
    if (std::isnan(value)) return "not run";
    if (target.empty()) return "info";
    const double t = std::atof(target.c_str() + 3);
    const bool ok = target.rfind("<=", 0) == 0 ? value <= t : value >= t;
    return ok ? "met" : "NOT met";
  }
};

/// Every figure of a run, in table order (docs/performance.md explains each): measured ones get a
/// value, the others stay "not run".
struct Figures {
  std::vector<Figure> list = {
      {"step_time_ratio", "LoRA step / FullFT step (median)", NAN, ""},
      {"lora_vs_bitfit_step_ratio", "LoRA step / BitFit step (the floor; median)", NAN, "<= 1.03"},
      {"peak_rss_ratio", "peak RSS, LoRA process / FullFT process", NAN, ""},
      {"compat_path_step_ratio", "LoRA step, plain torch::nn::Linear (compat) / lora::Linear", NAN, ""},
      {"bitfit_step_ratio", "reference floor: BitFit (biases only) step / FullFT step", NAN, ""},
      {"fullft_sgemm_fraction", "FullFT step FLOP/s / sgemm FLOP/s (same process)", NAN, ">= 0.80"},
      {"unmerged_forward_overhead", "eval forward, unmerged r=16 / base", NAN, "<= 1.06"},
      {"merged_forward_overhead", "eval forward, merged / base", NAN, "<= 1.02"},
      {"dynamic_padding_speedup", "AG-News epoch, pad-to-512 / dynamic+bucketing", NAN, ">= 5"},
      {"cnn_lora_step_ratio", "CNN: LoRA (lora::Conv2d) step / FullFT step", NAN, ""},
      {"cnn_compat_step_ratio", "CNN: LoRA (plain torch::nn::Conv2d) step / FullFT step", NAN, ""},
      {"cnn_lora_vs_bitfit", "CNN: LoRA (lora::Conv2d) step / BitFit step (the floor)", NAN, ""},
      {"cnn_unmerged_forward_overhead", "CNN eval forward, unmerged / base", NAN, ""},
      {"cnn_merged_forward_overhead", "CNN eval forward, merged / base", NAN, ""},
      {"emb_lora_step_ratio", "embedding-heavy: LoRA (lora::Embedding) step / FullFT step", NAN, ""},
      {"emb_compat_step_ratio", "embedding-heavy: LoRA (plain torch::nn::Embedding) step / FullFT step", NAN, ""},
      {"emb_lora_vs_bitfit", "embedding-heavy: LoRA (lora::Embedding) step / BitFit step", NAN, ""},
      {"serving_mixed1_vs_single", "serving: 1 adapter routed per row / the same adapter active", NAN, ""},
      {"serving_mixed4_vs_single", "serving: 4 adapters routed per row / 1 adapter active", NAN, ""},
      {"serving_mixed16_vs_single", "serving: 16 adapters routed per row / 1 adapter active", NAN, "<= 1.30"},
      {"serving_loop4_vs_mixed4", "serving: one forward per adapter (PEFT's way) / routed, 4 adapters", NAN, ""},
      {"serving_loop16_vs_mixed16", "serving: one forward per adapter / routed, 16 adapters", NAN, ">= 1.00"},
      {"serving_grouped16_vs_single", "serving: 16 adapters routed, rows sorted by adapter / 1 adapter active", NAN, ""},
      {"wordpiece_mb_s", "WordPiece MB/s, 1 thread, cold", NAN, ""},
      {"bpe_mb_s", "GPT-2 BPE MB/s, 1 thread, cold", NAN, ""},
  };

  /// The figure called `field`.
  Figure& operator()(const std::string& field) {
    for (auto& f : list)
      if (f.field == field) return f;
    throw std::logic_error("no figure called " + field);
  }
};

/// The table of figures: field, value, target, status, what.
inline void print_table(const Figures& figs) {
  fmt::print("\n{:<28} {:>10} {:>9}  {:<8} {}\n", "figure", "value", "target", "status", "what");
  fmt::print("{}\n", std::string(110, '-'));
  for (const auto& f : figs.list)
    fmt::print("{:<28} {:>10} {:>9}  {:<8} {}\n", f.field, std::isnan(f.value) ? "-" : fmt::format("{:.3f}", f.value),
               f.target.empty() ? "-" : f.target, f.status(), f.what);
}

/// Writes the figures (each a named field, with "targets"), the `machine`, the settings of `o`
/// and the `details` of each measurement to o.json_path.
inline void write_json(const Options& o, const Figures& figs, const nlohmann::json& machine,
                       const nlohmann::json& details) {
  using json = nlohmann::json;
  json j;
  for (const auto& f : figs.list) {
    j[f.field] = std::isnan(f.value) ? json(nullptr) : json(f.value);
    j["targets"][f.field] = {{"target", f.target.empty() ? json(nullptr) : json(f.target)}, {"status", f.status()}};
  }
  j["machine"] = machine;
  j["settings"] = {{"device", o.device}, {"quick", o.quick}, {"layers", o.layers}, {"batch", o.batch},
                   {"tokens", o.tokens}, {"rank", o.rank}, {"alpha", o.alpha}, {"steps", o.steps},
                   {"warmup", o.warmup}, {"threads", o.threads}, {"blas_threads", o.blas_threads},
                   {"allocator", o.allocator}};
  j["details"] = details;
  std::ofstream(o.json_path) << j.dump(2) << "\n";
}

}  // namespace bench

// The command line shared by agnews_sweep and wikitext_sweep: the Options it is parsed into,
// what each program adds (ProgramSpec) and the built-in defaults. Parsing: cli.hpp; what a
// point runs with (grid, lora::Config, device): point_config.hpp.
//
// Layers, strongest first: flags given on the command line; the --preset's flags; the
// program's own defaults (ProgramSpec::defaults); the built-in defaults (builtin_defaults(),
// the one place that states them: --help shows them from there too). Every layer is a list of
// flags as a user would type them. Flags that exclude each other (--rank/--ranks,
// --seed/--seeds, --alpha/--alpha-per-rank/--alphas) form one group: a flag given explicitly hides the
// whole group in the weaker layers.
//
// Which points run:
//  - LoRA: every rank of --ranks (or the single --rank) at every LR of --lrs.
//    `--ranks none` (or `--ranks` with no value) runs no LoRA point. With several --alphas,
//    every rank at every alpha, each (rank, alpha) its own column ("lora_r16_a8"), at --lrs
//    or at that alpha's own LRs (--alpha-lrs 8:1e-3,2e-3).
//  - FullFT: with --full-finetune, at every LR of --full-lrs, which defaults to --lrs.
//    Giving --full-lrs turns --full-finetune on. `--ranks none --full-lrs ...` is a FullFT-only sweep.
//  - Each of the above once per seed (--seed, or the list --seeds).
#pragma once

#include <CLI/CLI.hpp>

#include <lora/init.hpp>
#include <lora/scaling.hpp>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "grid.hpp"

namespace sweep {

/// Thrown by parse_options() for --help: print `text` and exit with status 0.
struct HelpRequested {
  std::string text;
};

/// Flag values to apply as a block: {"--epochs", {"1"}}, {"--full-finetune", {}} for a switch.
using FlagValues = std::vector<std::pair<std::string, std::vector<std::string>>>;

/// `base` with `more` on top: a flag `more` sets replaces base's (a preset built on a shared block).
inline FlagValues with_flags(const FlagValues& base, const FlagValues& more) {
  FlagValues out;
  for (const auto& f : base)
    if (std::none_of(more.begin(), more.end(), [&](const auto& m) { return m.first == f.first; })) out.push_back(f);
  out.insert(out.end(), more.begin(), more.end());
  return out;
}

struct Preset {
  std::string description;
  FlagValues flags;
};

/// The parsed command line. parse_options() sets every field, from the flags or their defaults
/// (builtin_defaults()); a default-constructed Options holds no defaults of its own.
struct Options {
  std::string program;
  // The grid.
  std::vector<double> lrs;                            ///< LoRA learning rates
  std::vector<int64_t> ranks;                         ///< empty: no LoRA points
  std::vector<double> full_lrs;                       ///< empty: no FullFT points
  std::vector<uint64_t> seeds;
  double alpha = 0;                                   ///< 0 with --alpha-per-rank or --alphas
  std::vector<double> alphas;                         ///< --alphas: one column per rank and alpha
  std::map<double, std::vector<double>> alpha_lrs;    ///< --alpha-lrs: one alpha's own LoRA LRs
  double alpha_per_rank = 0;                          ///< > 0: alpha = alpha_per_rank * r
  std::string scaling;
  std::string init;
  double init_std = 0;                                ///< sigma of gaussian-gaussian
  std::vector<std::string> targets;
  double loraplus_ratio = 0;                          ///< LR of B = ratio * LR of A (LoRA+); 1: off
  bool dora = false;
  std::string full_train;                             ///< what FullFT trains: all, no-embeddings, linear
  // Training and data.
  int64_t epochs = 0;
  int64_t batch_size = 0;
  int64_t train_size = 0;
  int64_t val_size = 0;
  int64_t max_len = 0;
  // Places and machine.
  std::string model_dir, data_dir, out;
  std::string device;
  int64_t threads = 0;                                ///< per point; 0: LibTorch's default (with --jobs N: cores / N)
  int64_t jobs = 0;                                   ///< points trained at once, each in its own process
  // What to do.
  Shard shard;
  bool sharded = false;                               ///< --shard was given
  bool merge = false;
  bool dry_run = false;
  std::string preset;
  /// Task-specific settings (ProgramSpec::add_flags): recorded with every point, checked on resume.
  std::map<std::string, std::string> extra;
  /// The program name and the arguments as given.
  std::vector<std::string> command_line;
};

/// What each program brings to the shared command line.
struct ProgramSpec {
  std::string name;                    ///< "agnews_sweep", shown in --help and recorded
  std::string description;             ///< the first line of --help
  std::string data_dir_env = "LORA_DATA_DIR";  ///< environment variable for --data-dir's default
  std::string model_subdir;            ///< --model-dir defaults to <data-dir>/<model_subdir>
  FlagValues defaults;                 ///< the program's defaults, e.g. {"--targets", {"c_attn", ...}}
  std::map<std::string, Preset> presets;
  /// Adds task-specific flags; bind them into `o.extra` entries to have them recorded with every
  /// point and checked on resume, e.g. app.add_option("--padding", o.extra["padding"]).
  std::function<void(CLI::App& app, Options& o)> add_flags;
};

inline const std::vector<std::string>& scaling_names() { return lora::scaling::names(); }
inline const std::vector<std::string>& init_names() { return lora::init::names(); }
/// What --full-train may name: every parameter (the seed study's FullFT), all but the embedding
/// tables, or only the Linear layers (weights and biases: the layers all-linear LoRA adapts).
inline const std::vector<std::string>& full_train_names() {
  static const std::vector<std::string> n = {"all", "no-embeddings", "linear"};
  return n;
}

/// The built-in defaults of the shared flags, as a user would type them: the weakest layer of
/// parse_options(), and what --help shows (under the program's own defaults). The only place
/// these values are stated.
inline FlagValues builtin_defaults(const ProgramSpec& spec) {
  return {{"--lrs", {"1e-5", "3e-5", "1e-4", "3e-4"}},
          {"--ranks", {"16", "32", "64", "128"}},
          {"--seed", {"42"}},
          {"--alpha", {"32"}},
          {"--scaling", {"alpha-over-rank"}},
          {"--init", {"uniform-zero"}},
          {"--init-std", {"1"}},
          {"--targets", {"all-linear"}},
          {"--loraplus-ratio", {"1"}},
          {"--full-train", {"all"}},
          {"--epochs", {"5"}},
          {"--batch-size", {"32"}},
          {"--train-size", {"10000"}},
          {"--val-size", {"2000"}},
          {"--max-len", {"512"}},
          {"--out", {"runs/" + spec.name}},
          {"--device", {"cpu"}},
          {"--threads", {"0"}},
          {"--jobs", {"1"}}};
}

}  // namespace sweep

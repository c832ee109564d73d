// The command line shared by agnews_sweep and wikitext_sweep: the Options it is parsed into,
// what each program adds (ProgramSpec), the built-in defaults, and the parser (CLI11), which
// checks and converts each flag with an examples::UsageError that names the flag, the value and
// what is allowed. What a point runs with, from the Options: point.hpp.
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

#include <torch/cuda.h>
#include <torch/types.h>

#include <lora/init.hpp>
#include <lora/scaling.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "grid.hpp"
#include "task.hpp"

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
/// (builtin_defaults()); a default-constructed Options holds no defaults of its own, except
/// `adamw`, which no flag sets.
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
  /// AdamW's betas, eps and weight decay, the same for every point. No flag sets them:
  /// parse_options() leaves AdamWSettings' defaults (task.hpp); an embedding program or a test
  /// may change them here. point_run() (point.hpp) hands them to training and to the record.
  AdamWSettings adamw;
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
  int64_t pack = 0;                                   ///< LoRA points of one seed trained in one pass (run.hpp)
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
          {"--jobs", {"1"}},
          {"--pack", {"1"}}};
}

namespace detail {

// Checking one flag's value: a finite number, a positive one, an integer with a minimum, one of
// a list of names; each failure an examples::UsageError naming the flag, the value and what is
// allowed.

inline std::string join(const std::vector<std::string>& v, const std::string& sep = ", ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

/// `text` as a finite number, or an examples::UsageError naming `flag` and what it expects.
inline double number(const std::string& flag, const std::string& text, const std::string& expect) {
  char* end = nullptr;
  const double v = text.empty() ? NAN : std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v))
    throw examples::UsageError(flag + ": '" + text + "' is not a number; give " + expect + ".");
  return v;
}
inline double positive(const std::string& flag, const std::string& text, const std::string& expect) {
  const double v = number(flag, text, expect);
  if (!(v > 0)) throw examples::UsageError(flag + ": '" + text + "' is not allowed; give " + expect + ".");
  return v;
}
/// `text` as an integer >= `min`.
inline int64_t integer(const std::string& flag, const std::string& text, int64_t min) {
  const std::string expect = "an integer >= " + std::to_string(min);
  char* end = nullptr;
  const long long v = text.empty() ? 0 : std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0')
    throw examples::UsageError(flag + ": '" + text + "' is not an integer; give " + expect + ".");
  if (v < min) throw examples::UsageError(flag + ": '" + text + "' is not allowed; give " + expect + ".");
  return v;
}
inline std::string one_of(const std::string& flag, const std::string& text, const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), text) == allowed.end())
    throw examples::UsageError(flag + ": '" + text + "' is not allowed; use one of " + join(allowed) + ".");
  return text;
}

// Parsing, layer by layer.

/// The flags as strings, bound to CLI11; convert() checks and converts them. Empty: not given
/// in any layer (a flag whose group a rival took, such as --alpha beside --alpha-per-rank).
struct RawFlags {
  std::vector<std::string> lrs, ranks, full_lrs, seeds, targets, alphas, alpha_lrs;
  std::string rank, epochs, alpha, alpha_per_rank, scaling, init, init_std, batch_size, seed, train_size, val_size,
      max_len, model_dir, data_dir, out, device, threads, jobs, pack, shard, preset, loraplus_ratio, full_train;
  bool full_finetune = false, merge = false, dry_run = false, dora = false;
};

/// The default of `flag` in force: the program's own, else the built-in one.
inline std::vector<std::string> default_of(const ProgramSpec& spec, const std::string& flag) {
  for (const auto& layer : {spec.defaults, builtin_defaults(spec)})
    for (const auto& [name, values] : layer)
      if (name == flag) return values;
  return {};
}

/// Mutually exclusive flags share a group, so that a flag given hides its rivals in the
/// preset and default layers.
inline std::string flag_group(const std::string& name) {
  if (name == "--rank" || name == "--ranks") return "ranks";
  if (name == "--seed" || name == "--seeds") return "seeds";
  if (name == "--alpha" || name == "--alpha-per-rank" || name == "--alphas" || name == "--alpha-lrs") return "alpha";
  return name;
}

/// The CLI11 app of `spec`, its options bound to `raw` and (task flags) to `o`.
inline std::unique_ptr<CLI::App> make_app(const ProgramSpec& spec, RawFlags& raw, Options& o) {
  auto app = std::make_unique<CLI::App>(spec.description, spec.name);
  auto& a = *app;
  a.option_defaults()->always_capture_default();
  // The grid.
  a.add_option("--lrs", raw.lrs, "LoRA learning rates")->type_name("LR ...")->group("Grid");
  auto* rank = a.add_option("--rank", raw.rank, "a single LoRA rank (same as --ranks R)")->type_name("R")->group("Grid");
  auto* ranks = a.add_option("--ranks", raw.ranks,
                             "LoRA ranks [default: " + join(default_of(spec, "--ranks"), " ") +
                                 "]; 'none' or no value: no LoRA runs")
                    ->expected(0, CLI::detail::expected_max_vector_size)
                    ->type_name("R ...")
                    ->group("Grid");
  rank->excludes(ranks);
  a.add_flag("--full-finetune", raw.full_finetune, "also run full fine-tuning, at --full-lrs")->group("Grid");
  a.add_option("--full-lrs", raw.full_lrs, "FullFT learning rates (default: --lrs); implies --full-finetune")
      ->type_name("LR ...")
      ->group("Grid");
  auto* seed = a.add_option("--seed", raw.seed, "random seed")->type_name("N")->group("Grid");
  auto* seeds = a.add_option("--seeds", raw.seeds, "several seeds: every point runs once per seed")->type_name("N ...")->group("Grid");
  seed->excludes(seeds);
  // LoRA.
  auto* alpha = a.add_option("--alpha", raw.alpha, "LoRA alpha")->type_name("NUM")->group("LoRA");
  auto* per_rank = a.add_option("--alpha-per-rank", raw.alpha_per_rank, "alpha = K * r (the seed's 'alpha = 10r': 10)")
                       ->type_name("K")
                       ->group("LoRA");
  auto* alphas = a.add_option("--alphas", raw.alphas, "several alphas at every rank, each (rank, alpha) its own column")
                     ->type_name("NUM ...")
                     ->group("LoRA");
  a.add_option("--alpha-lrs", raw.alpha_lrs,
               "with --alphas: the LoRA LRs of one alpha instead of --lrs, e.g. 8:1e-3,2e-3,3e-3 (repeatable)")
      ->type_name("ALPHA:LR,...")
      ->group("LoRA");
  alpha->excludes(per_rank);
  alpha->excludes(alphas);
  per_rank->excludes(alphas);
  a.add_option("--scaling", raw.scaling, "scale s from alpha and r: " + join(scaling_names(), "|"))->type_name("NAME")->group("LoRA");
  a.add_option("--init", raw.init, "A/B init: " + join(init_names(), "|"))->type_name("NAME")->group("LoRA");
  a.add_option("--init-std", raw.init_std, "sigma of A and B for --init gaussian-gaussian")->type_name("NUM")->group("LoRA");
  a.add_option("--targets", raw.targets, "layers to adapt (lora::Config::targets syntax)")->type_name("NAME ...")->group("LoRA");
  a.add_option("--loraplus-ratio", raw.loraplus_ratio, "LoRA+: B's LR = ratio * A's LR (1: off)")->type_name("NUM")->group("LoRA");
  a.add_flag("--dora", raw.dora, "DoRA (weight-decomposed LoRA; lora::Linear layers only)")->group("LoRA");
  a.add_option("--full-train", raw.full_train,
               "what FullFT trains: all (every parameter), no-embeddings (the embedding tables frozen), linear "
               "(only the Linear layers, the ones all-linear LoRA adapts)")
      ->type_name("WHAT")
      ->group("Grid");
  // Training and data.
  a.add_option("--epochs", raw.epochs, "training epochs")->type_name("N")->group("Training");
  a.add_option("--batch-size,--batch_size", raw.batch_size, "batch size")->type_name("N")->group("Training");
  a.add_option("--train-size", raw.train_size, "training examples")->type_name("N")->group("Training");
  a.add_option("--val-size", raw.val_size, "validation examples")->type_name("N")->group("Training");
  a.add_option("--max-len", raw.max_len, "maximum sequence length in tokens")->type_name("N")->group("Training");
  // Places and machine.
  a.add_option("--model-dir", raw.model_dir, "model folder [default: <data-dir>/" + spec.model_subdir + "]")
      ->type_name("DIR")
      ->group("Files");
  a.add_option("--data-dir", raw.data_dir, "data folder [default: $" + spec.data_dir_env + ", else ~/.cache/lora]")
      ->type_name("DIR")
      ->group("Files");
  a.add_option("--out", raw.out, "output folder")->type_name("DIR")->group("Files");
  a.add_option("--device", raw.device, "cpu, cuda or cuda:N")->type_name("DEV")->group("Machine");
  a.add_option("--threads", raw.threads, "CPU threads per point, LibTorch's and OpenBLAS's (0: their defaults; with --jobs N: cores / N)")
      ->type_name("N")
      ->group("Machine");
  a.add_option("--jobs,-j", raw.jobs,
               "train N points at once, each in its own process (same results as one at a time with the same "
               "--threads)")
      ->type_name("N")
      ->group("Machine");
  a.add_option("--pack", raw.pack,
               "train up to K LoRA points of one seed in one forward/backward pass, each row of the batch "
               "routed to its point's adapter (FullFT points run alone; each file records its pack)")
      ->type_name("K")
      ->group("Machine");
  // What to do.
  auto* shard = a.add_option("--shard", raw.shard, "run slice I of N of the grid (0 <= I < N)")->type_name("I/N")->group("Sweep");
  auto* merge = a.add_flag("--merge", raw.merge, "write results.json, summary.md and the plot from out/points/")
                    ->group("Sweep");
  auto* dry = a.add_flag("--dry-run", raw.dry_run, "print the grid and its estimated cost; run nothing")
                  ->group("Sweep");
  merge->excludes(shard);
  merge->excludes(dry);
  a.add_option("--preset", raw.preset, "named flag defaults (below); explicit flags override them")->type_name("NAME")->group("Sweep");
  if (spec.add_flags) spec.add_flags(a, o);
  // Show the defaults in force, the program's over the built-in ones (not --ranks' here, but in
  // its description: CLI11 would take a default it knows for an empty --ranks).
  for (const auto& layer : {builtin_defaults(spec), spec.defaults})
    for (const auto& [flag, values] : layer)
      if (auto* opt = a.get_option_no_throw(flag); opt && opt->get_name() != "--ranks")
        opt->default_str(join(values, " "));

  std::string footer = "Presets:\n";
  for (const auto& [name, p] : spec.presets) {
    footer += "  " + name + ": " + p.description + "\n     ";
    for (const auto& [flag, values] : p.flags) footer += " " + flag + (values.empty() ? "" : " " + join(values, " "));
    footer += "\n";
  }
  footer +=
      "FullFT runs with --full-finetune (at --full-lrs, default --lrs) or --full-lrs; '--ranks none' runs no LoRA.\n"
      "Outputs in --out: points/<key>.json (one per finished point), results.json, summary.md, plot.svg/png.";
  a.footer(footer);
  return app;
}

/// Parses `args` (no program name) into `raw`; CLI11's errors become examples::UsageError, --help
/// HelpRequested.
inline std::unique_ptr<CLI::App> parse_layer(const ProgramSpec& spec, const std::vector<std::string>& args,
                                             RawFlags& raw, Options& o) {
  auto app = make_app(spec, raw, o);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 takes them last first
  try {
    app->parse(reversed);
  } catch (const CLI::CallForHelp&) {
    throw HelpRequested{app->help()};
  } catch (const CLI::ParseError& e) {
    throw examples::UsageError(std::string(e.what()) + ". Run " + spec.name + " --help for the flags.");
  }
  return app;
}

/// The flags of `layer` whose group no earlier layer (tracked in `claimed`) has set, as arguments.
inline std::vector<std::string> layer_args(const CLI::App& app, const FlagValues& layer, const std::string& what,
                                           std::set<std::string>& claimed) {
  std::vector<std::string> args;
  std::set<std::string> mine;
  for (const auto& [flag, values] : layer) {
    const auto* opt = app.get_option_no_throw(flag);
    if (!opt) throw examples::Error(what + " sets '" + flag + "', which is not a flag of this program.");
    const auto group = flag_group(opt->get_name());
    if (claimed.count(group)) continue;
    mine.insert(group);
    args.push_back(flag);
    args.insert(args.end(), values.begin(), values.end());
  }
  claimed.insert(mine.begin(), mine.end());
  return args;
}

/// Default data folder: $<env>, else $XDG_CACHE_HOME/lora, else $HOME/.cache/lora.
inline std::string default_data_dir(const std::string& env) {
  if (const char* v = std::getenv(env.c_str()); v && *v) return v;
  if (const char* v = std::getenv("XDG_CACHE_HOME"); v && *v) return std::string(v) + "/lora";
  if (const char* v = std::getenv("HOME"); v && *v) return std::string(v) + "/.cache/lora";
  return ".cache/lora";
}

/// Checks and converts the strings of `raw` into `o`.
inline void convert(const RawFlags& raw, const ProgramSpec& spec, Options& o) {
  o.program = spec.name;
  const std::string lr_expect = "positive learning rates such as 1e-5 3e-5 1e-4";
  o.lrs.clear();
  for (const auto& t : raw.lrs) o.lrs.push_back(positive("--lrs", t, lr_expect));
  if (!raw.rank.empty()) {
    o.ranks = {integer("--rank", raw.rank, 1)};
  } else if (!raw.ranks.empty()) {
    o.ranks.clear();
    const bool none = raw.ranks == std::vector<std::string>{"none"} || raw.ranks == std::vector<std::string>{""};
    if (!none)
      for (const auto& t : raw.ranks) o.ranks.push_back(integer("--ranks", t, 1));
  }
  o.full_lrs.clear();
  for (const auto& t : raw.full_lrs) o.full_lrs.push_back(positive("--full-lrs", t, lr_expect));
  if (raw.full_finetune && o.full_lrs.empty()) o.full_lrs = o.lrs;
  o.seeds.clear();
  if (raw.seeds.empty()) o.seeds.push_back(static_cast<uint64_t>(integer("--seed", raw.seed, 0)));
  for (const auto& t : raw.seeds) o.seeds.push_back(static_cast<uint64_t>(integer("--seeds", t, 0)));

  if (!raw.alpha_per_rank.empty())
    o.alpha_per_rank = positive("--alpha-per-rank", raw.alpha_per_rank, "a positive K (alpha = K * r)");
  if (!raw.alpha.empty()) o.alpha = number("--alpha", raw.alpha, "a finite alpha such as 32");
  o.alphas.clear();
  for (const auto& t : raw.alphas) o.alphas.push_back(positive("--alphas", t, "positive alphas such as 8 32 128"));
  o.alpha_lrs.clear();
  for (const auto& t : raw.alpha_lrs) {
    const std::string expect = "ALPHA:LR,LR,... with ALPHA one of --alphas, e.g. 8:1e-3,2e-3";
    const auto colon = t.find(':');
    if (colon == std::string::npos) throw examples::UsageError("--alpha-lrs: '" + t + "' has no ':'; give " + expect + ".");
    const double alpha = positive("--alpha-lrs", t.substr(0, colon), expect);
    if (std::find(o.alphas.begin(), o.alphas.end(), alpha) == o.alphas.end())
      throw examples::UsageError("--alpha-lrs: alpha " + t.substr(0, colon) + " in '" + t +
                                 "' is not one of --alphas; give " + expect + ".");
    if (o.alpha_lrs.count(alpha))
      throw examples::UsageError("--alpha-lrs: alpha " + t.substr(0, colon) + " is given twice; list its LRs once.");
    auto& lrs = o.alpha_lrs[alpha];
    std::string rest = t.substr(colon + 1);
    for (size_t start = 0; start <= rest.size();) {
      const auto comma = std::min(rest.find(',', start), rest.size());
      lrs.push_back(positive("--alpha-lrs", rest.substr(start, comma - start), expect));
      start = comma + 1;
    }
  }
  o.scaling = one_of("--scaling", raw.scaling, scaling_names());
  o.init = one_of("--init", raw.init, init_names());
  o.init_std = positive("--init-std", raw.init_std, "a positive standard deviation such as 1 or 0.02");
  o.targets = raw.targets;
  if (o.targets.empty())
    throw examples::UsageError("--targets: no layer given; name layers such as q_lin v_lin, or all-linear.");
  o.loraplus_ratio = positive("--loraplus-ratio", raw.loraplus_ratio, "a positive ratio (1: plain LoRA; LoRA+ uses 16)");
  o.dora = raw.dora;
  o.full_train = one_of("--full-train", raw.full_train, full_train_names());

  o.epochs = integer("--epochs", raw.epochs, 1);
  o.batch_size = integer("--batch-size", raw.batch_size, 1);
  o.train_size = integer("--train-size", raw.train_size, 1);
  o.val_size = integer("--val-size", raw.val_size, 1);
  o.max_len = integer("--max-len", raw.max_len, 1);

  o.data_dir = raw.data_dir.empty() ? default_data_dir(spec.data_dir_env) : raw.data_dir;
  o.model_dir = !raw.model_dir.empty() || spec.model_subdir.empty() ? raw.model_dir : o.data_dir + "/" + spec.model_subdir;
  o.out = raw.out;
  const bool cuda_n = raw.device.rfind("cuda:", 0) == 0 && raw.device.size() > 5 &&
                      raw.device.find_first_not_of("0123456789", 5) == std::string::npos;
  if (raw.device != "cpu" && raw.device != "cuda" && !cuda_n)
    throw examples::UsageError("--device: '" + raw.device + "' is not allowed; use one of cpu, cuda, cuda:N.");
  o.device = raw.device;
  o.threads = integer("--threads", raw.threads, 0);
  o.jobs = integer("--jobs", raw.jobs, 1);
  o.pack = integer("--pack", raw.pack, 1);
  if (o.pack > 1 && o.dora)
    throw examples::UsageError("--pack " + raw.pack + " with --dora: a DoRA adapter rescales the whole base output, "
                               "so the rows of one batch cannot each use their own. Drop --pack (or --dora).");

  o.sharded = !raw.shard.empty();
  if (o.sharded) o.shard = parse_shard(raw.shard);
  o.merge = raw.merge;
  o.dry_run = raw.dry_run;
  o.preset = raw.preset;
  if (o.ranks.empty() && o.full_lrs.empty())
    throw examples::UsageError("--ranks: no LoRA rank and no FullFT run: nothing to do. Give ranks, or add "
                               "--full-finetune or --full-lrs for a FullFT-only sweep.");
}

}  // namespace detail

/// Parses the arguments `args` (without the program name). Throws examples::UsageError on a bad flag
/// or value, HelpRequested for --help.
inline Options parse_options(const std::vector<std::string>& args, const ProgramSpec& spec) {
  // Pass 1: the explicit flags alone, to learn the preset and which flags were given.
  detail::RawFlags raw1;
  Options scratch;
  const auto app1 = detail::parse_layer(spec, args, raw1, scratch);
  std::set<std::string> claimed;
  for (const auto* opt : app1->get_options())
    if (opt->count() > 0) claimed.insert(detail::flag_group(opt->get_name()));

  // Pass 2: explicit flags, then the preset's, the program's and the built-in defaults for the rest.
  std::vector<std::string> all = args;
  if (!raw1.preset.empty()) {
    const auto it = spec.presets.find(raw1.preset);
    if (it == spec.presets.end()) {
      std::vector<std::string> names;
      for (const auto& kv : spec.presets) names.push_back(kv.first);
      throw examples::UsageError("--preset: '" + raw1.preset + "' is not a preset of " + spec.name + "; use one of " +
                                 (names.empty() ? std::string("(none)") : detail::join(names)) + ".");
    }
    const auto more = detail::layer_args(*app1, it->second.flags, "preset '" + raw1.preset + "'", claimed);
    all.insert(all.end(), more.begin(), more.end());
  }
  for (const auto& [layer, what] : {std::pair(spec.defaults, spec.name + "'s defaults"),
                                    std::pair(builtin_defaults(spec), std::string("the built-in defaults"))}) {
    const auto more = detail::layer_args(*app1, layer, what, claimed);
    all.insert(all.end(), more.begin(), more.end());
  }

  detail::RawFlags raw;
  Options o;
  detail::parse_layer(spec, all, raw, o);
  detail::convert(raw, spec, o);
  o.command_line.push_back(spec.name);
  o.command_line.insert(o.command_line.end(), args.begin(), args.end());
  return o;
}

/// parse_options() for main()'s argc/argv.
inline Options parse_options(int argc, const char* const argv[], const ProgramSpec& spec) {
  return parse_options(std::vector<std::string>(argv + 1, argv + argc), spec);
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

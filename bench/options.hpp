// lora_bench's command line: what to measure, on which device and threads, at which sizes.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

namespace bench {

struct Options {
  std::string device = "cpu";
  /// torch::set_num_threads (LibTorch's own pool, used by elementwise kernels). 1 measured
  /// best here: the kernels between the matrix products are short, and waking a second
  /// OpenMP thread on a 2-core VM cost more than it saved (docs/performance.md).
  int threads = 1;
  int blas_threads = 0;  ///< openblas_set_num_threads (the matrix products); 0: one per core
  std::string allocator = "caching";  ///< "caching": perf::use_caching_cpu_allocator(); "default": LibTorch's
  int steps = 0;         ///< timed training steps per side; 0: 5 (3 with --quick)
  int warmup = 2;
  bool quick = false;
  std::string json_path;
  std::filesystem::path shared_dir;
  std::string only = "train,forward,kinds,serving,padding,tokenizers";
  int64_t batch = 32, tokens = 128;
  int64_t layers = 6;
  int64_t rank = 16;
  double alpha = 32;
  bool want(const std::string& group) const { return ("," + only + ",").find("," + group + ",") != std::string::npos; }
};

/// The options of the command line; nothing when the program should exit with `status` instead
/// (0 after --help; CLI11 has printed why for a bad flag).
inline std::optional<Options> parse_options(int argc, char** argv, int& status) {
  Options o;
  CLI::App app{"lora_bench: the LoRA performance figures, measured side by side in one run"};
  app.add_option("--device", o.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--threads", o.threads, "LibTorch intra-op threads (default 1, measured best; 0: one per core)");
  app.add_option("--blas-threads", o.blas_threads, "OpenBLAS threads (0: one per core)");
  app.add_option("--allocator", o.allocator,
                 "caching: perf::use_caching_cpu_allocator() in every process (default); default: LibTorch's")
      ->check(CLI::IsMember({"caching", "default", "glibc-keep"}));
  app.add_option("--steps", o.steps, "timed training steps per side (0: 5, or 3 with --quick)");
  app.add_option("--warmup", o.warmup, "untimed warm-up steps per side");
  app.add_flag("--quick", o.quick, "smaller shapes and fewer steps (a smoke run, indicative figures)");
  app.add_option("--json", o.json_path, "write the figures to this JSON file");
  std::string shared;
  app.add_option("--shared-dir", shared, "folder with data/ (default $LORA_SHARED_DIR, else ../shared)");
  app.add_option("--only", o.only, "comma-separated groups: train,forward,kinds,serving,padding,tokenizers");
  app.add_option("--batch", o.batch, "training batch size");
  app.add_option("--tokens", o.tokens, "tokens per row for the training and forward figures");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    status = app.exit(e);
    return std::nullopt;
  }
  if (shared.empty()) {
    const char* env = std::getenv("LORA_SHARED_DIR");
    shared = env && *env ? env : "../shared";
  }
  o.shared_dir = shared;
  if (o.quick) {
    o.layers = 2;
    if (o.steps == 0) o.steps = 3;
    if (app.count("--warmup") == 0) o.warmup = 1;
    if (app.count("--batch") == 0) o.batch = 8;
  }
  if (o.steps == 0) o.steps = 5;
  return o;
}

}  // namespace bench

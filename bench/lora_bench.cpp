// lora_bench: every figure of the performance issue, measured side by side in one run, printed
// as a table (figure, value, target, met) and written with --json FILE as named fields.
//
//   lora_bench [--device cpu|cuda] [--threads N] [--blas-threads N] [--steps N] [--quick]
//              [--json FILE] [--shared-dir DIR] [--only train,forward,kinds,serving,padding,tokenizers]
//
// Figures (docs/performance.md explains each and holds the latest values):
//   step_time_ratio            LoRA (r=16 on every Linear) / FullFT training step, AdamW, the
//                              same batches, DistilBERT-shaped model, batch 32 x 128 (reported:
//                              the BitFit floor below bounds it, so LoRA is graded against that)
//   lora_vs_bitfit_step_ratio  LoRA step / BitFit step: how close LoRA gets to the floor that no
//                              adapter on every Linear can beat (goal <= 1.03)
//   peak_rss_ratio             peak resident memory of the LoRA side / the FullFT side
//   compat_path_step_ratio     the same LoRA step on a plain torch::nn::Linear model adapted
//                              through the compatibility path / on lora::Linear (fast path)
//   bitfit_step_ratio          a reference floor: training only the biases of the same Linear
//                              layers (BitFit) / FullFT. The gradient flows through the same
//                              layers as for LoRA, with no adapter products at all, so no
//                              adapter on every Linear can step much below this on the machine
//   fullft_sgemm_fraction      achieved FLOP/s of the FullFT step / sgemm FLOP/s of the step's
//                              largest product shape, measured in the same process
//   unmerged_forward_overhead  inference forward with an unmerged r=16 adapter / base model
//   merged_forward_overhead    the same with the adapter merged / base model
//   dynamic_padding_speedup    AG-News training epoch (LoRA, real WordPiece tokens) padded to
//                              512 / dynamic padding with length bucketing (extrapolated from
//                              timed steps, see below)
//   cnn_*, emb_*               LoRA on convolutions / an embedding table, drop-ins and plain
//                              torch::nn layers, against FullFT and the BitFit floor; the CNN's
//                              forward unmerged / merged (kinds_figures.hpp)
//   serving_*                  one batch whose rows use 1, 4 or 16 adapters (ranks 8 and 16):
//                              routed per row (lora::RowRouting) / one adapter active, and one
//                              forward per adapter (PEFT's way) / routed, and the rows sorted
//                              by adapter / one adapter active (serving_figures.hpp)
//   wordpiece_mb_s, bpe_mb_s   one-thread tokenizer throughput on wiki.valid.raw + AG-News test
//
// Every measurement runs in a child process forked before the parent touches LibTorch's
// compute (so OpenMP/OpenBLAS thread pools and CUDA start fresh in each): each side of a
// comparison has its own process, so its peak RSS (VmHWM) is its own, and the sides of a
// ratio step in turns (A, B, C, A, B, C, ...) so that a change in machine load hits them alike.
// Times are medians over the timed steps after warm-up; ratios are medians over rounds of the
// ratio within a round.
//
// The parts: options.hpp (the command line), machine.hpp (/proc), worker.hpp (the fork/pipe
// harness), timing.hpp, trainer.hpp (the model and the sides of each comparison), a header per
// group of figures (train_, forward_, kinds_, serving_, padding_ and tokenizer_figures.hpp) and figures.hpp (the
// table and --json).
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/version.h>

#include <perf/blas.hpp>

#include <unistd.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

#include "figures.hpp"
#include "forward_figures.hpp"
#include "kinds_figures.hpp"
#include "serving_figures.hpp"
#include "machine.hpp"
#include "options.hpp"
#include "padding_figures.hpp"
#include "tokenizer_figures.hpp"
#include "train_figures.hpp"
#include "trainer.hpp"
#include "worker.hpp"

int main(int argc, char** argv) try {
  using namespace bench;
  int status = 0;
  const auto parsed = parse_options(argc, argv, status);
  if (!parsed) return status;
  const Options& o = *parsed;

  // Machine description. The parent runs no LibTorch kernel and never initialises CUDA, so
  // that every child starts with fresh thread pools and a usable CUDA context.
  json machine = {{"cpu", cpu_model()},
                  {"cpus_online", sysconf(_SC_NPROCESSORS_ONLN)},
                  {"cpus_allowed", cpus_allowed()},
                  {"memory", first_line("/proc/meminfo")},
                  {"libtorch", TORCH_VERSION},
                  {"blas", perf::blas_library()},
                  {"load_average_start", load_average()}};
  fmt::print("lora_bench{}: device {}\n", o.quick ? " --quick" : "", o.device);
  fmt::print("  CPU: {} ({} online, {} allowed)\n", machine["cpu"].get<std::string>(), sysconf(_SC_NPROCESSORS_ONLN),
             cpus_allowed());
  fmt::print("  LibTorch {}; BLAS: {}\n", TORCH_VERSION, machine["blas"].get<std::string>());
  fmt::print("  load average at start: {}\n", machine["load_average_start"].get<std::string>());
  fmt::print("  CPU allocator: {}\n", o.allocator == "caching" ? "caching (perf::use_caching_cpu_allocator)" : o.allocator);
  {
    Worker w("blas check", [] { return Handler([](const json&) {
                                  auto c = perf::blas_check();
                                  return json{{"gflops", c.gflops}, {"warning", c.warning}};
                                }); }, o);
    auto c = w.call({{"op", "check"}});
    machine["torch_threads"] = w.info()["torch_threads"];
    machine["blas_threads"] = w.info()["blas_threads"];
    machine["sgemm256_gflops"] = c["gflops"];
    fmt::print("  threads: LibTorch intra-op {}, OpenBLAS {}; 256x256 sgemm {:.1f} GFLOP/s\n",
               w.info()["torch_threads"].get<int>(), w.info()["blas_threads"].get<int>(), c["gflops"].get<double>());
    if (!c["warning"].get<std::string>().empty()) fmt::print("  {}\n", c["warning"].get<std::string>());
    w.finish();
  }
  const auto cfg = model_config(o);
  fmt::print("  model: DistilBERT-shaped, {} layers, dim {}, {} heads, FFN {}, vocab {}, dropout {} (random weights)\n",
             cfg.n_layers, cfg.dim, cfg.n_heads, cfg.hidden_dim, cfg.vocab_size, cfg.dropout);
  fmt::print("  training: batch {} x {} tokens, AdamW, LoRA r={} alpha={} on every Linear; {} warm-up + {} timed steps per side\n",
             o.batch, o.tokens, o.rank, o.alpha, o.warmup, o.steps);
  std::fflush(stdout);

  Figures figs;
  json details;
  if (o.want("train")) measure_train(o, figs, details);
  if (o.want("forward")) measure_forward(o, figs, details);
  if (o.want("kinds")) measure_kinds(o, figs, details);
  if (o.want("serving")) measure_serving(o, figs, details);
  if (o.want("padding")) measure_padding(o, figs, details);
  if (o.want("tokenizers")) measure_tokenizers(o, figs, details);

  machine["load_average_end"] = load_average();
  print_table(figs);
  fmt::print("load average at end: {}\n", machine["load_average_end"].get<std::string>());
  if (!o.json_path.empty()) {
    write_json(o, figs, machine, details);
    fmt::print("wrote {}\n", o.json_path);
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "lora_bench: " << e.what() << "\n";
  return 1;
}

// Time of one DistilBERT-shaped forward pass (distilbert-base: 6 layers, dim 768, 12 heads,
// FFN 3072, vocab 30522; random weights) on a batch of 32 x 128 tokens, in eval mode without
// autograd, and the GFLOP/s it reaches (matrix products only: projections, attention, FFN).
//
//   model_bench [--device cpu|cuda] [--dtype float|bf16|half] [--batch 32] [--tokens 128]
//               [--repeat 5] [--threads N]
//
// Defaults: cuda when available, else cpu; float; the best and the mean of `repeat` timed
// passes after one warm-up pass.
#include <models/distilbert.hpp>

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string device = torch::cuda::is_available() ? "cuda" : "cpu";
  std::string dtype = "float";
  int64_t batch = 32, tokens = 128, repeat = 5, threads = 0;
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "model_bench: %s\nusage: model_bench [--device cpu|cuda] [--dtype float|bf16|half] [--batch N] "
               "[--tokens N] [--repeat N] [--threads N]\n",
               why.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) usage("missing value after " + flag);
    const std::string value = argv[++i];
    if (flag == "--device")
      o.device = value;
    else if (flag == "--dtype")
      o.dtype = value;
    else if (flag == "--batch")
      o.batch = std::stoll(value);
    else if (flag == "--tokens")
      o.tokens = std::stoll(value);
    else if (flag == "--repeat")
      o.repeat = std::stoll(value);
    else if (flag == "--threads")
      o.threads = std::stoll(value);
    else
      usage("unknown option " + flag);
  }
  if (o.device != "cpu" && o.device != "cuda") usage("--device must be cpu or cuda");
  if (o.device == "cuda" && !torch::cuda::is_available()) usage("CUDA is not available");
  if (o.batch < 1 || o.tokens < 1 || o.tokens > 512 || o.repeat < 1) usage("batch, repeat >= 1; tokens in [1, 512]");
  return o;
}

torch::Dtype dtype_of(const std::string& name) {
  if (name == "float") return torch::kFloat;
  if (name == "bf16") return torch::kBFloat16;
  if (name == "half") return torch::kHalf;
  usage("--dtype must be float, bf16 or half");
}

/// Floating-point operations of the matrix products of one forward pass.
double forward_flops(const models::DistilBertConfig& c, int64_t B, int64_t T) {
  const double N = static_cast<double>(B * T), C = c.dim, H = c.hidden_dim;
  const double projections = 4 * 2 * N * C * C;  // q, k, v, out
  const double attention = 2 * 2 * N * static_cast<double>(T) * C;  // scores and context, all heads
  const double ffn = 2 * 2 * N * C * H;  // lin1, lin2
  return c.n_layers * (projections + attention + ffn);
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  if (o.threads > 0) torch::set_num_threads(static_cast<int>(o.threads));
  const torch::Device device(o.device);
  const models::DistilBertConfig config;  // HF's defaults: distilbert-base

  torch::manual_seed(0);
  models::DistilBertModel model(config);
  model->to(device, dtype_of(o.dtype));
  model->eval();
  torch::NoGradGuard no_grad;
  const auto ids =
      torch::randint(0, config.vocab_size, {o.batch, o.tokens}, torch::TensorOptions(torch::kLong).device(device));
  const auto mask = torch::ones({o.batch, o.tokens}, ids.options());

  model(ids, mask);  // warm-up
  synchronize(device);
  std::vector<double> ms;
  for (int64_t i = 0; i < o.repeat; ++i) {
    const auto start = std::chrono::steady_clock::now();
    model(ids, mask);
    synchronize(device);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  const double best = *std::min_element(ms.begin(), ms.end());
  double mean = 0;
  for (double m : ms) mean += m / static_cast<double>(ms.size());
  const double gflop = forward_flops(config, o.batch, o.tokens) / 1e9;
  std::printf("DistilBERT forward, batch %lld x %lld tokens, %s %s, %d threads\n", static_cast<long long>(o.batch),
              static_cast<long long>(o.tokens), o.device.c_str(), o.dtype.c_str(), torch::get_num_threads());
  std::printf("  %.1f GFLOP per pass; best %.2f ms (%.1f GFLOP/s), mean %.2f ms (%.1f GFLOP/s) over %lld passes\n",
              gflop, best, gflop / (best / 1e3), mean, gflop / (mean / 1e3), static_cast<long long>(o.repeat));
  return 0;
}

// lora_bench: every figure of the performance issue, measured side by side in one run, printed
// as a table (figure, value, target, met) and written with --json FILE as named fields.
//
//   lora_bench [--device cpu|cuda] [--threads N] [--blas-threads N] [--steps N] [--quick]
//              [--json FILE] [--shared-dir DIR] [--only train,forward,padding,tokenizers]
//
// Figures (docs/performance.md explains each and holds the latest values):
//   step_time_ratio            LoRA (r=16 on every Linear) / FullFT training step, AdamW, the
//                              same batches, DistilBERT-shaped model, batch 32 x 128
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
//   wordpiece_mb_s, bpe_mb_s   one-thread tokenizer throughput on wiki.valid.raw + AG-News test
//
// Every measurement runs in a child process forked before the parent touches LibTorch's
// compute (so OpenMP/OpenBLAS thread pools and CUDA start fresh in each): each side of a
// comparison has its own process, so its peak RSS (VmHWM) is its own, and the sides of a
// ratio step in turns (A, B, C, A, B, C, ...) so that a change in machine load hits them alike.
// Times are medians over the timed steps after warm-up; ratios are medians over rounds of the
// ratio within a round.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <torch/version.h>

#include <data/agnews.hpp>
#include <data/batching.hpp>
#include <lora/lora.hpp>
#include <models/distilbert.hpp>
#include <perf/allocator.hpp>
#include <perf/blas.hpp>
#include <text/bpe.hpp>
#include <text/wordpiece.hpp>

#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// median over i of a[i] / b[i]: pairs measured back to back.
double median_ratio(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) r.push_back(a[i] / b[i]);
  return median(r);
}

// ---------------------------------------------------------------------------------------------
// Options

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
  fs::path shared_dir;
  std::string only = "train,forward,padding,tokenizers";
  int64_t batch = 32, tokens = 128;
  int64_t layers = 6;
  int64_t rank = 16;
  double alpha = 32;
  bool want(const std::string& group) const { return ("," + only + ",").find("," + group + ",") != std::string::npos; }
};

// ---------------------------------------------------------------------------------------------
// Machine description (parent side: nothing here runs a LibTorch kernel)

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

std::string first_line(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string proc_status_field(const std::string& key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key + ":", 0) == 0) {
      auto v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "";
}

/// VmHWM / VmRSS of this process in MiB.
double proc_mib(const std::string& key) { return std::atof(proc_status_field(key).c_str()) / 1024.0; }

int cpus_allowed() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
}

// ---------------------------------------------------------------------------------------------
// Worker processes: a forked child that answers JSON commands, one per line, over pipes.

using Handler = std::function<json(const json&)>;

void apply_threads(const Options& o) {
  const int cores = cpus_allowed();
  torch::set_num_threads(o.threads > 0 ? o.threads : cores);  // 0: one per core
  perf::set_blas_threads(o.blas_threads > 0 ? o.blas_threads : cores);
}

void write_line(int fd, const std::string& s) {
  std::string line = s + "\n";
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("pipe write failed: ") + std::strerror(errno));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
}

bool read_line(FILE* f, std::string& out) {
  out.clear();
  for (int c; (c = std::fgetc(f)) != EOF;) {
    if (c == '\n') return true;
    out.push_back(static_cast<char>(c));
  }
  return !out.empty();
}

class Worker {
 public:
  /// Forks. The child applies the thread settings, builds its handler with `make` on the
  /// first command ("setup") and then answers commands until "quit".
  Worker(std::string name, std::function<Handler()> make, const Options& o) : name_(std::move(name)) {
    int to[2], from[2];
    if (pipe(to) != 0 || pipe(from) != 0) throw std::runtime_error("pipe failed");
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::close(to[1]);
      ::close(from[0]);
      serve(to[0], from[1], make, o);
    }
    ::close(to[0]);
    ::close(from[1]);
    out_ = to[1];
    in_ = fdopen(from[0], "r");
    const auto t0 = clock_type::now();
    auto r = call({{"op", "setup"}});
    setup_s_ = seconds_since(t0);
    info_ = r;
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (in_) std::fclose(in_);
    if (out_ >= 0) ::close(out_);
  }

  json call(const json& cmd) {
    write_line(out_, cmd.dump());
    std::string line;
    if (!read_line(in_, line)) throw std::runtime_error(name_ + ": the worker process died (see its messages above)");
    auto r = json::parse(line);
    if (r.contains("error")) throw std::runtime_error(name_ + ": " + r["error"].get<std::string>());
    return r;
  }

  /// Ends the child; returns its last report (peak RSS, ...).
  json finish() {
    auto r = call({{"op", "quit"}});
    int status = 0;
    struct rusage ru {};
    wait4(pid_, &status, 0, &ru);
    r["ru_maxrss_mib"] = static_cast<double>(ru.ru_maxrss) / 1024.0;
    pid_ = -1;
    return r;
  }

  const json& info() const { return info_; }

 private:
  [[noreturn]] static void serve(int in_fd, int out_fd, const std::function<Handler()>& make, const Options& o) {
    FILE* in = fdopen(in_fd, "r");
    Handler handler;
    std::string line;
    int code = 0;
    while (read_line(in, line)) {
      json reply;
      try {
        const auto cmd = json::parse(line);
        const auto op = cmd.value("op", "");
        if (op == "setup") {
          const double rss0 = proc_mib("VmRSS");
          if (o.allocator == "caching") perf::use_caching_cpu_allocator();
          if (o.allocator == "glibc-keep") mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, -1);
          apply_threads(o);
          handler = make();
          reply = {{"ok", true},
                   {"rss_at_start_mib", rss0},
                   {"torch_threads", torch::get_num_threads()},
                   {"blas_threads", perf::blas_threads()}};
        } else if (op == "quit") {
          const auto st = perf::CachingCpuAllocator::instance().stats();
          reply = {{"vm_hwm_mib", proc_mib("VmHWM")},
                   {"vm_rss_mib", proc_mib("VmRSS")},
                   {"cache_mapped_mib", static_cast<double>(st.mapped) / (1 << 20)},
                   {"cache_peak_in_use_mib", static_cast<double>(st.peak_in_use) / (1 << 20)},
                   {"cache_hits", st.hits},
                   {"cache_misses", st.misses},
                   {"cache_evictions", st.evictions}};
          write_line(out_fd, reply.dump());
          break;
        } else {
          if (!handler) throw std::runtime_error("no handler");
          reply = handler(cmd);
        }
      } catch (const std::exception& e) {
        reply = {{"error", e.what()}};
        code = 1;
      }
      write_line(out_fd, reply.dump());
    }
    std::fflush(nullptr);
    _exit(code);
  }

  std::string name_;
  pid_t pid_ = -1;
  int out_ = -1;
  FILE* in_ = nullptr;
  double setup_s_ = 0;
  json info_;
};

/// Lets the thread pools of the previous process go idle (OpenBLAS threads spin for a while
/// after a call) before the next process starts timing.
void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(250)); }

// ---------------------------------------------------------------------------------------------
// The same DistilBERT written with plain torch::nn::Linear, for the compatibility path. It
// shares the embeddings, the attention core and the activation with models::DistilBert, and
// registers the same names, so a state dict moves between the two (checked at setup).

namespace plain {

class FFNImpl : public torch::nn::Module {
 public:
  explicit FFNImpl(const models::DistilBertConfig& c) : activation(c.activation) {
    lin1 = register_module("lin1", torch::nn::Linear(c.dim, c.hidden_dim));
    lin2 = register_module("lin2", torch::nn::Linear(c.hidden_dim, c.dim));
    dropout = register_module("dropout", torch::nn::Dropout(c.dropout));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    return models::detail::dropout(lin2(models::activate(activation, lin1(x))), dropout);
  }
  models::Activation activation;
  torch::nn::Linear lin1{nullptr}, lin2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(FFN);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const models::DistilBertConfig& c) : n_heads(c.n_heads) {
    q_lin = register_module("q_lin", torch::nn::Linear(c.dim, c.dim));
    k_lin = register_module("k_lin", torch::nn::Linear(c.dim, c.dim));
    v_lin = register_module("v_lin", torch::nn::Linear(c.dim, c.dim));
    out_lin = register_module("out_lin", torch::nn::Linear(c.dim, c.dim));
    dropout = register_module("dropout", torch::nn::Dropout(c.attention_dropout));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& masked) {
    return out_lin(models::detail::attend(q_lin(x), k_lin(x), v_lin(x), masked, n_heads, dropout));
  }
  int64_t n_heads;
  torch::nn::Linear q_lin{nullptr}, k_lin{nullptr}, v_lin{nullptr}, out_lin{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Attention);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const models::DistilBertConfig& c) {
    const auto ln = torch::nn::LayerNormOptions({c.dim}).eps(1e-12);
    attention = register_module("attention", Attention(c));
    sa_layer_norm = register_module("sa_layer_norm", torch::nn::LayerNorm(ln));
    ffn = register_module("ffn", FFN(c));
    output_layer_norm = register_module("output_layer_norm", torch::nn::LayerNorm(ln));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& masked) {
    auto h = sa_layer_norm(attention(x, masked) + x);
    return output_layer_norm(ffn(h) + h);
  }
  Attention attention{nullptr};
  torch::nn::LayerNorm sa_layer_norm{nullptr};
  FFN ffn{nullptr};
  torch::nn::LayerNorm output_layer_norm{nullptr};
};
TORCH_MODULE(Block);

class ModelImpl : public torch::nn::Module {
 public:
  explicit ModelImpl(const models::DistilBertConfig& c) : config(c) {
    auto d = register_module("distilbert", std::make_shared<torch::nn::Module>());
    embeddings = d->register_module("embeddings", models::DistilBertEmbeddings(c));
    auto t = d->register_module("transformer", std::make_shared<torch::nn::Module>());
    layer = t->register_module("layer", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.n_layers; ++i) layer->push_back(Block(c));
    pre_classifier = register_module("pre_classifier", torch::nn::Linear(c.dim, c.dim));
    classifier = register_module("classifier", torch::nn::Linear(c.dim, c.num_labels));
    dropout = register_module("dropout", torch::nn::Dropout(c.seq_classif_dropout));
  }
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
    const auto masked = models::detail::padding_keys(attention_mask);
    auto x = embeddings(input_ids);
    for (const auto& block : *layer) x = block->as<BlockImpl>()->forward(x, masked);
    auto pooled = dropout(torch::relu(pre_classifier(x.select(1, 0))));
    return classifier(pooled);
  }
  models::DistilBertConfig config;
  models::DistilBertEmbeddings embeddings{nullptr};
  torch::nn::ModuleList layer{nullptr};
  torch::nn::Linear pre_classifier{nullptr}, classifier{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(Model);

}  // namespace plain

// ---------------------------------------------------------------------------------------------
// Training steps

models::DistilBertConfig model_config(const Options& o) {
  models::DistilBertConfig c;  // distilbert-base: dim 768, 12 heads, FFN 3072, vocab 30522
  c.n_layers = o.layers;
  c.num_labels = 4;  // AG-News
  return c;
}

/// The seed study's LoRA: every Linear including the output head, alpha 32 (the 4-output
/// classifier gets rank 4, the most a 4 x 768 layer allows).
lora::Config lora_config(const Options& o) {
  lora::Config c;
  c.rank = o.rank;
  c.alpha = o.alpha;
  c.targets = {"all-linear"};
  c.adapt_output_head = true;
  c.rank_pattern["classifier"] = std::min<int64_t>(o.rank, 4);
  return c;
}

void synchronize(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

/// FLOPs of one training step (forward + backward = 3x forward) of the classification model:
/// the matrix products only (projections, attention scores and context, FFN, head).
double train_step_flops(const models::DistilBertConfig& c, int64_t B, int64_t T) {
  const double N = static_cast<double>(B * T), C = c.dim, H = c.hidden_dim;
  const double layer = 2 * N * (4 * C * C + 2 * C * H) + 4 * N * static_cast<double>(T) * C;
  const double head = 2 * static_cast<double>(B) * (C * C + C * static_cast<double>(c.num_labels));
  return 3 * (static_cast<double>(c.n_layers) * layer + head);
}

enum class Side { fullft, lora, compat, bitfit };

const char* side_name(Side s) {
  switch (s) {
    case Side::fullft: return "FullFT";
    case Side::lora: return "LoRA";
    case Side::compat: return "LoRA compat";
    case Side::bitfit: return "BitFit";
  }
  return "?";
}

/// BitFit: every parameter frozen except the bias of each lora::Linear layer (the layers LoRA
/// adapts), so the backward pass reaches the same layers as LoRA's, without adapter products.
std::vector<torch::Tensor> bitfit_parameters(torch::nn::Module& m) {
  for (auto& p : m.parameters()) p.set_requires_grad(false);
  std::vector<torch::Tensor> biases;
  for (const auto& sub : m.modules())
    if (auto* lin = dynamic_cast<lora::LinearImpl*>(sub.get()); lin && lin->bias.defined())
      biases.push_back(lin->bias.set_requires_grad(true));
  return biases;
}

/// One training setup in one process: a model, its optimizer, and fixed batches.
struct Trainer {
  torch::Device device{torch::kCPU};
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)> forward;  // ids, mask -> logits
  lora::Adapters adapters;
  bool adapted = false;
  std::vector<torch::Tensor> params;
  std::unique_ptr<torch::optim::AdamW> opt;

  /// One AdamW step on (ids, mask, labels); returns seconds (synchronised).
  double step(const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor& labels, double* loss_out) {
    synchronize(device);
    const auto t0 = clock_type::now();
    for (auto& p : params) p.mutable_grad().reset();  // set_to_none: no memset, no accumulate
    auto loss = torch::nn::functional::cross_entropy(forward(ids, mask), labels);
    loss.backward();
    if (adapted)
      adapters.step(*opt);
    else
      opt->step();
    synchronize(device);
    const double s = seconds_since(t0);
    if (loss_out) *loss_out = loss.item<double>();  // after the clock: no sync inside the step
    return s;
  }
};

std::shared_ptr<Trainer> make_trainer(Side side, const Options& o, const models::DistilBertConfig& cfg) {
  auto t = std::make_shared<Trainer>();
  t->device = torch::Device(o.device);
  torch::manual_seed(0);
  if (side == Side::compat) {
    plain::Model m(cfg);
    m->to(t->device);
    t->module = m.ptr();
    t->forward = [m](const torch::Tensor& ids, const torch::Tensor& mask) mutable { return m(ids, mask); };
  } else {
    models::DistilBertForSequenceClassification m(cfg);
    m->to(t->device);
    t->module = m.ptr();
    t->forward = [m](const torch::Tensor& ids, const torch::Tensor& mask) mutable { return m(ids, mask).logits; };
  }
  t->module->train();
  if (side == Side::fullft) {
    t->params = lora::unique_parameters(*t->module);
  } else if (side == Side::bitfit) {
    t->params = bitfit_parameters(*t->module);
  } else {
    t->adapters = lora::inject(*t->module, lora_config(o));
    t->adapted = true;
    t->params = t->adapters.parameters();
  }
  // The seed study's optimiser: AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0.001.
  t->opt = std::make_unique<torch::optim::AdamW>(t->params, torch::optim::AdamWOptions(1e-4).weight_decay(1e-3));
  return t;
}

/// The fixed batches every side trains on: random token ids (no padding), random labels.
struct FixedBatches {
  std::vector<torch::Tensor> ids, mask, labels;
  FixedBatches(const Options& o, const models::DistilBertConfig& cfg, int n) {
    auto gen = at::detail::createCPUGenerator(1234);
    const torch::Device d(o.device);
    for (int i = 0; i < n; ++i) {
      ids.push_back(at::randint(1000, cfg.vocab_size, {o.batch, o.tokens}, gen, torch::kLong).to(d));
      mask.push_back(torch::ones({o.batch, o.tokens}, torch::kLong).to(d));
      labels.push_back(at::randint(0, cfg.num_labels, {o.batch}, gen, torch::kLong).to(d));
    }
  }
};

/// Rate of the sgemm shape (rows x k) x (k x n) as F::linear runs it (x W^T), GFLOP/s: median
/// of `reps` after a warm-up.
double sgemm_gflops(int64_t rows, int64_t k, int64_t n, const torch::Device& d, int reps = 5) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(7);
  auto x = at::randn({rows, k}, gen, torch::kFloat).to(d), w = at::randn({n, k}, gen, torch::kFloat).to(d);
  auto y = torch::mm(x, w.t());
  synchronize(d);
  std::vector<double> s;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = clock_type::now();
    torch::mm_out(y, x, w.t());
    synchronize(d);
    s.push_back(seconds_since(t0));
  }
  return 2.0 * static_cast<double>(rows) * static_cast<double>(k) * static_cast<double>(n) / median(s) / 1e9;
}

/// max |a - b| between the plain-Linear model and models::DistilBert with the same weights, in
/// eval mode, on a small config: the compatibility side computes the same function.
double plain_model_check() {
  models::DistilBertConfig c;
  c.n_layers = 2, c.dim = 64, c.n_heads = 4, c.hidden_dim = 128, c.vocab_size = 100, c.num_labels = 4;
  torch::manual_seed(3);
  models::DistilBertForSequenceClassification a(c);
  plain::Model b(c);
  {
    torch::NoGradGuard no_grad;
    auto src = a->named_parameters();
    for (auto& p : b->named_parameters()) p.value().copy_(src[p.key()]);
  }
  a->eval();
  b->eval();
  auto ids = torch::randint(0, c.vocab_size, {3, 9}, torch::kLong);
  auto mask = torch::ones({3, 9}, torch::kLong);
  mask.index_put_({0, torch::indexing::Slice(5)}, 0);
  torch::NoGradGuard no_grad;
  return (a(ids, mask).logits - b(ids, mask)).abs().max().item<double>();
}

Handler train_handler(Side side, const Options& o) {
  const auto cfg = model_config(o);
  auto t = make_trainer(side, o, cfg);
  auto batches = std::make_shared<FixedBatches>(o, cfg, 3);
  double check = -1;
  if (side == Side::compat) check = plain_model_check();
  return [t, batches, o, cfg, check](const json& cmd) -> json {
    const auto op = cmd.at("op").get<std::string>();
    if (op == "step") {
      const auto i = cmd.value("i", 0) % static_cast<int>(batches->ids.size());
      double loss = 0;
      const double s = t->step(batches->ids[i], batches->mask[i], batches->labels[i], &loss);
      return {{"s", s}, {"loss", loss}};
    }
    if (op == "sgemm") {
      const int64_t N = o.batch * o.tokens;
      return {{"ffn_gflops", sgemm_gflops(N, cfg.dim, cfg.hidden_dim, t->device)},
              {"proj_gflops", sgemm_gflops(N, cfg.dim, cfg.dim, t->device)}};
    }
    if (op == "info") {
      int64_t trainable = 0;
      for (const auto& p : t->params) trainable += p.numel();
      return {{"trainable", trainable}, {"plain_model_max_diff", check}};
    }
    throw std::runtime_error("unknown op " + op);
  };
}

// ---------------------------------------------------------------------------------------------
// Inference forward: base, unmerged adapter, merged adapter, in turns in one process

Handler forward_handler(const Options& o) {
  const auto cfg = model_config(o);
  const torch::Device d(o.device);
  torch::manual_seed(0);
  models::DistilBertForSequenceClassification base(cfg);
  torch::manual_seed(0);
  models::DistilBertForSequenceClassification adapted(cfg);  // the same weights
  auto adapters = std::make_shared<lora::Adapters>(lora::inject(*adapted, lora_config(o)));
  // B = 0 at init would make the adapter a no-op in value (not in cost); give it values.
  {
    torch::NoGradGuard no_grad;
    for (auto& b : adapters->b_parameters()) b.normal_(0, 0.02);
  }
  base->to(d);
  adapted->to(d);
  base->eval();
  adapted->eval();
  auto gen = at::detail::createCPUGenerator(99);
  auto ids = at::randint(1000, cfg.vocab_size, {o.batch, o.tokens}, gen, torch::kLong).to(d);
  auto mask = torch::ones({o.batch, o.tokens}, torch::kLong).to(d);
  return [=](const json& cmd) mutable -> json {
    const auto which = cmd.at("model").get<std::string>();
    torch::NoGradGuard no_grad;
    auto& m = which == "base" ? base : adapted;
    if (which == "merged") adapters->merge();
    synchronize(d);
    const auto t0 = clock_type::now();
    auto out = m(ids, mask).logits;
    synchronize(d);
    const double s = seconds_since(t0);
    if (which == "merged") adapters->unmerge();
    return {{"s", s}, {"checksum", out.sum().item<double>()}};
  };
}

// ---------------------------------------------------------------------------------------------
// AG-News epoch: dynamic padding + bucketing vs padding to 512

struct PaddingState {
  std::shared_ptr<Trainer> trainer;
  std::vector<std::vector<int64_t>> seqs;
  std::vector<int64_t> labels, lengths;
  std::vector<std::vector<size_t>> fixed, dynamic;
  data::BatchOptions fixed_opts, dynamic_opts;
};

Handler padding_handler(const Options& o) {
  auto st = std::make_shared<PaddingState>();
  const auto agnews = o.shared_dir / "data" / "agnews" / "train_subset_14995.csv";
  const auto vocab = o.shared_dir / "data" / "tokenizers" / "bert-base-uncased" / "vocab.txt";
  data::SplitOptions split;  // the study's: 10,000 train rows, seed 42 (no validation rows needed)
  split.val_size = 0;
  const auto train = data::load_agnews_train(agnews, split).train;
  const text::WordPieceTokenizer tok(vocab);
  const auto t0 = clock_type::now();
  for (const auto& ex : train) {
    st->seqs.push_back(tok.encode(ex.text, true, 512));
    st->labels.push_back(ex.label);
  }
  const double tokenize_s = seconds_since(t0);
  st->lengths = data::lengths_of(st->seqs);
  st->fixed_opts.batch_size = st->dynamic_opts.batch_size = 32;
  st->fixed_opts.max_len = st->dynamic_opts.max_len = 512;
  st->fixed_opts.keep_last = st->dynamic_opts.keep_last = true;
  st->fixed_opts.padding = data::Padding::Fixed;  // the seed study: every row padded to 512
  st->dynamic_opts.padding = data::Padding::Dynamic;
  st->dynamic_opts.bucket_batches = 50;
  std::mt19937_64 rng_a(42), rng_b(42);
  st->fixed = data::plan_batches(st->lengths, st->fixed_opts, rng_a);
  st->dynamic = data::plan_batches(st->lengths, st->dynamic_opts, rng_b);
  st->trainer = make_trainer(Side::lora, o, model_config(o));
  auto describe = [st](const std::vector<std::vector<size_t>>& plan, const data::BatchOptions& bo) {
    std::vector<int64_t> widths;
    int64_t positions = 0;
    for (const auto& b : plan) {
      widths.push_back(data::batch_width(st->lengths, b, bo));
      positions += widths.back() * static_cast<int64_t>(b.size());
    }
    return json{{"batches", plan.size()},
                {"positions", positions},
                {"padding", data::padding_count(st->lengths, plan, bo)},
                {"widths", widths}};
  };
  int64_t real = 0;
  for (auto l : st->lengths) real += std::min<int64_t>(l, 512);
  json info = {{"rows", st->seqs.size()},
               {"tokens", real},
               {"tokenize_s", tokenize_s},
               {"fixed", describe(st->fixed, st->fixed_opts)},
               {"dynamic", describe(st->dynamic, st->dynamic_opts)}};
  return [st, info](const json& cmd) -> json {
    const auto op = cmd.at("op").get<std::string>();
    if (op == "info") return info;
    if (op == "step") {
      const bool fixed = cmd.at("plan").get<std::string>() == "fixed";
      const auto& plan = fixed ? st->fixed : st->dynamic;
      const auto& bo = fixed ? st->fixed_opts : st->dynamic_opts;
      const auto& idx = plan.at(cmd.at("index").get<size_t>());
      auto b = data::collate_classification(st->seqs, st->labels, idx, bo);
      const torch::Device d = st->trainer->device;
      double loss = 0;
      const double s = st->trainer->step(b.input_ids.to(d), b.attention_mask.to(d), b.labels.to(d), &loss);
      return {{"s", s}, {"width", b.input_ids.size(1)}, {"loss", loss}};
    }
    throw std::runtime_error("unknown op " + op);
  };
}

// ---------------------------------------------------------------------------------------------
// Tokenizers: one cold pass per corpus

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string() + " (set --shared-dir or LORA_SHARED_DIR)");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Handler tokenizer_handler(const Options& o) {
  const auto data_dir = o.shared_dir / "data";
  std::vector<std::pair<std::string, std::vector<std::string>>> corpora;
  {
    std::vector<std::string> lines;
    std::istringstream in(read_text(data_dir / "wikitext-2-raw" / "wiki.valid.raw"));
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    corpora.emplace_back("wiki.valid.raw", std::move(lines));
    std::vector<std::string> texts;
    for (const auto& ex : data::read_agnews(data_dir / "agnews" / "test.csv")) texts.push_back(ex.text);
    corpora.emplace_back("agnews test", std::move(texts));
  }
  return [corpora, data_dir](const json&) -> json {
    json rows = json::array();
    double bytes_all = 0, wp_s = 0, bpe_s = 0;
    for (const auto& [name, texts] : corpora) {
      double bytes = 0;
      for (const auto& t : texts) bytes += static_cast<double>(t.size());
      bytes_all += bytes;
      auto time_pass = [&](auto& tok, size_t& ids) {
        const auto t0 = clock_type::now();
        for (const auto& t : texts) ids += tok.encode(t).size();
        return seconds_since(t0);
      };
      size_t wp_ids = 0, bpe_ids = 0, ignored = 0;
      // Fresh tokenizers per corpus: the first pass runs with a cold BPE cache.
      const text::WordPieceTokenizer wp(data_dir / "tokenizers" / "bert-base-uncased" / "vocab.txt");
      const text::BpeTokenizer bpe(data_dir / "tokenizers" / "gpt2" / "vocab.json",
                                   data_dir / "tokenizers" / "gpt2" / "merges.txt");
      const double a = time_pass(wp, wp_ids), b = time_pass(bpe, bpe_ids);
      const double b_warm = time_pass(bpe, ignored);
      wp_s += a;
      bpe_s += b;
      rows.push_back({{"corpus", name},
                      {"mb", bytes / 1e6},
                      {"wordpiece_mb_s", bytes / 1e6 / a},
                      {"wordpiece_ids", wp_ids},
                      {"bpe_mb_s", bytes / 1e6 / b},
                      {"bpe_warm_mb_s", bytes / 1e6 / b_warm},
                      {"bpe_ids", bpe_ids}});
    }
    return {{"wordpiece_mb_s", bytes_all / 1e6 / wp_s}, {"bpe_mb_s", bytes_all / 1e6 / bpe_s}, {"rows", rows}};
  };
}

// ---------------------------------------------------------------------------------------------
// Report

struct Figure {
  std::string field, what;
  double value = NAN;
  std::string target;  ///< "<= 0.70", ">= 5", or "" (reported, no target)
  std::string unit;
  std::string status() const {
    if (std::isnan(value)) return "not run";
    if (target.empty()) return "info";
    const double t = std::atof(target.c_str() + 3);
    const bool ok = target.rfind("<=", 0) == 0 ? value <= t : value >= t;
    return ok ? "met" : "NOT met";
  }
};

void print_table(const std::vector<Figure>& figs) {
  fmt::print("\n{:<28} {:>10} {:>9}  {:<8} {}\n", "figure", "value", "target", "status", "what");
  fmt::print("{}\n", std::string(110, '-'));
  for (const auto& f : figs)
    fmt::print("{:<28} {:>10} {:>9}  {:<8} {}\n", f.field, std::isnan(f.value) ? "-" : fmt::format("{:.3f}", f.value),
               f.target.empty() ? "-" : f.target, f.status(), f.what);
}

std::string load_average() { return first_line("/proc/loadavg"); }

}  // namespace

int main(int argc, char** argv) try {
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
  app.add_option("--only", o.only, "comma-separated groups: train,forward,padding,tokenizers");
  app.add_option("--batch", o.batch, "training batch size");
  app.add_option("--tokens", o.tokens, "tokens per row for the training and forward figures");
  CLI11_PARSE(app, argc, argv);
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

  std::vector<Figure> figs = {
      {"step_time_ratio", "LoRA step / FullFT step (median)", NAN, "<= 0.70"},
      {"peak_rss_ratio", "peak RSS, LoRA process / FullFT process", NAN, ""},
      {"compat_path_step_ratio", "LoRA step, plain torch::nn::Linear (compat) / lora::Linear", NAN, ""},
      {"bitfit_step_ratio", "reference floor: BitFit (biases only) step / FullFT step", NAN, ""},
      {"fullft_sgemm_fraction", "FullFT step FLOP/s / sgemm FLOP/s (same process)", NAN, ">= 0.80"},
      {"unmerged_forward_overhead", "eval forward, unmerged r=16 / base", NAN, "<= 1.06"},
      {"merged_forward_overhead", "eval forward, merged / base", NAN, "<= 1.02"},
      {"dynamic_padding_speedup", "AG-News epoch, pad-to-512 / dynamic+bucketing", NAN, ">= 5"},
      {"wordpiece_mb_s", "WordPiece MB/s, 1 thread, cold", NAN, ""},
      {"bpe_mb_s", "GPT-2 BPE MB/s, 1 thread, cold", NAN, ""},
  };
  auto fig = [&](const std::string& f) -> Figure& {
    for (auto& x : figs)
      if (x.field == f) return x;
    throw std::logic_error(f);
  };
  json details;

  if (o.want("train")) {
    fmt::print("\n[train] FullFT, LoRA (lora::Linear), LoRA (plain torch::nn::Linear, compat) and BitFit in turns\n");
    std::fflush(stdout);
    std::vector<Side> sides = {Side::fullft, Side::lora, Side::compat, Side::bitfit};
    std::vector<std::unique_ptr<Worker>> workers;
    for (auto s : sides)
      workers.push_back(std::make_unique<Worker>(side_name(s), [s, o] { return train_handler(s, o); }, o));
    const auto full_info = workers[0]->call({{"op", "info"}});
    const auto lora_info = workers[1]->call({{"op", "info"}});
    const auto compat_info = workers[2]->call({{"op", "info"}});
    const auto bitfit_info = workers[3]->call({{"op", "info"}});
    fmt::print("  trainable parameters: FullFT {}, LoRA {}, BitFit {}; plain-Linear copy vs models::DistilBert max |diff| "
               "{:.2e}\n",
               full_info["trainable"].get<int64_t>(), lora_info["trainable"].get<int64_t>(),
               bitfit_info["trainable"].get<int64_t>(), compat_info["plain_model_max_diff"].get<double>());
    std::vector<double> gemm_ffn, gemm_proj;
    auto sgemm = [&] {
      settle();
      auto g = workers[0]->call({{"op", "sgemm"}});
      gemm_ffn.push_back(g["ffn_gflops"].get<double>());
      gemm_proj.push_back(g["proj_gflops"].get<double>());
    };
    sgemm();
    std::vector<std::vector<double>> times(sides.size());
    for (int round = 0; round < o.warmup + o.steps; ++round) {
      for (size_t k = 0; k < sides.size(); ++k) {
        settle();
        auto r = workers[k]->call({{"op", "step"}, {"i", round}});
        if (round >= o.warmup) times[k].push_back(r["s"].get<double>());
        fmt::print("  round {} {:<12} {:7.3f} s  loss {:.4f}{}\n", round, side_name(sides[k]), r["s"].get<double>(),
                   r["loss"].get<double>(), round < o.warmup ? "  (warm-up)" : "");
        std::fflush(stdout);
      }
    }
    sgemm();
    std::vector<json> ends;
    for (auto& w : workers) ends.push_back(w->finish());
    const double full = median(times[0]), lo = median(times[1]), compat = median(times[2]), bitfit = median(times[3]);
    const double flops = train_step_flops(cfg, o.batch, o.tokens);
    const double achieved = flops / full / 1e9, peak = median(gemm_ffn);
    // Ratios: the median over rounds of the ratio within a round (its steps ran back to back),
    // which a passing disturbance of the machine moves far less than a ratio of medians.
    fig("step_time_ratio").value = median_ratio(times[1], times[0]);
    fig("compat_path_step_ratio").value = median_ratio(times[2], times[1]);
    fig("bitfit_step_ratio").value = median_ratio(times[3], times[0]);
    fig("peak_rss_ratio").value = ends[1]["vm_hwm_mib"].get<double>() / ends[0]["vm_hwm_mib"].get<double>();
    fig("fullft_sgemm_fraction").value = achieved / peak;
    details["train"] = {{"fullft_step_s", full},
                        {"lora_step_s", lo},
                        {"compat_step_s", compat},
                        {"bitfit_step_s", bitfit},
                        {"fullft_steps_s", times[0]},
                        {"lora_steps_s", times[1]},
                        {"compat_steps_s", times[2]},
                        {"bitfit_steps_s", times[3]},
                        {"fullft_peak_rss_mib", ends[0]["vm_hwm_mib"]},
                        {"lora_peak_rss_mib", ends[1]["vm_hwm_mib"]},
                        {"compat_peak_rss_mib", ends[2]["vm_hwm_mib"]},
                        {"rss_at_fork_mib", workers[0]->info()["rss_at_start_mib"]},
                        {"fullft_trainable", full_info["trainable"]},
                        {"lora_trainable", lora_info["trainable"]},
                        {"bitfit_trainable", bitfit_info["trainable"]},
                        {"step_gflop", flops / 1e9},
                        {"fullft_gflops", achieved},
                        {"sgemm_ffn_gflops", gemm_ffn},
                        {"sgemm_proj_gflops", gemm_proj},
                        {"plain_model_max_diff", compat_info["plain_model_max_diff"]},
                        {"allocator_fullft", ends[0]},
                        {"allocator_lora", ends[1]},
                        {"allocator_compat", ends[2]},
                        {"allocator_bitfit", ends[3]}};
    fmt::print("  median step: FullFT {:.3f} s, LoRA {:.3f} s, LoRA compat {:.3f} s, BitFit {:.3f} s\n", full, lo, compat,
               bitfit);
    fmt::print("  peak RSS: FullFT {:.0f} MiB, LoRA {:.0f} MiB, compat {:.0f} MiB (each process; {:.0f} MiB at fork)\n",
               ends[0]["vm_hwm_mib"].get<double>(), ends[1]["vm_hwm_mib"].get<double>(),
               ends[2]["vm_hwm_mib"].get<double>(), workers[0]->info()["rss_at_start_mib"].get<double>());
    fmt::print("  FullFT step {:.1f} GFLOP in {:.3f} s = {:.1f} GFLOP/s; sgemm ({}x{} by {}x{}) {:.1f} GFLOP/s, "
               "({}x{} by {}x{}) {:.1f} GFLOP/s\n",
               flops / 1e9, full, achieved, o.batch * o.tokens, cfg.dim, cfg.dim, cfg.hidden_dim, peak,
               o.batch * o.tokens, cfg.dim, cfg.dim, cfg.dim, median(gemm_proj));
    std::fflush(stdout);
  }

  if (o.want("forward")) {
    fmt::print("\n[forward] eval, no grad: base, unmerged adapter, merged adapter in turns\n");
    std::fflush(stdout);
    Worker w("forward", [o] { return forward_handler(o); }, o);
    std::vector<std::string> names = {"base", "unmerged", "merged"};
    std::vector<std::vector<double>> t(names.size());
    const int reps = o.steps + 1;
    for (int round = 0; round < o.warmup + reps; ++round)
      for (size_t k = 0; k < names.size(); ++k) {
        settle();
        auto r = w.call({{"model", names[k]}});
        if (round >= o.warmup) t[k].push_back(r["s"].get<double>());
      }
    w.finish();
    const double base = median(t[0]), un = median(t[1]), me = median(t[2]);
    fig("unmerged_forward_overhead").value = median_ratio(t[1], t[0]);
    fig("merged_forward_overhead").value = median_ratio(t[2], t[0]);
    details["forward"] = {{"base_s", base}, {"unmerged_s", un}, {"merged_s", me},
                          {"base_runs_s", t[0]}, {"unmerged_runs_s", t[1]}, {"merged_runs_s", t[2]}};
    fmt::print("  median forward ({} runs): base {:.3f} s, unmerged {:.3f} s, merged {:.3f} s\n", reps, base, un, me);
    std::fflush(stdout);
  }

  if (o.want("padding")) {
    fmt::print("\n[padding] AG-News train epoch (10,000 rows, batch 32), LoRA, padded to 512 vs dynamic + bucketing\n");
    std::fflush(stdout);
    Worker w("padding", [o] { return padding_handler(o); }, o);
    const auto info = w.call({{"op", "info"}});
    const auto widths = info["dynamic"]["widths"].get<std::vector<int64_t>>();
    const size_t n = widths.size();
    // Dynamic side: K batches at evenly spaced width quantiles (each stands for n/K batches of
    // similar width), so the sum estimates the epoch with little sampling error.
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return widths[a] < widths[b]; });
    const int K = o.quick ? 6 : 12, M = o.quick ? 1 : 2;
    w.call({{"op", "step"}, {"plan", "dynamic"}, {"index", order[n / 2]}});  // warm-up
    double dyn_epoch = 0;
    json dyn_samples = json::array();
    for (int i = 0; i < K; ++i) {
      const size_t idx = order[static_cast<size_t>((i + 0.5) * static_cast<double>(n) / K)];
      settle();
      auto r = w.call({{"op", "step"}, {"plan", "dynamic"}, {"index", idx}});
      dyn_epoch += r["s"].get<double>() * static_cast<double>(n) / K;
      dyn_samples.push_back({{"width", r["width"]}, {"s", r["s"]}});
    }
    std::vector<double> fixed_t;
    w.call({{"op", "step"}, {"plan", "fixed"}, {"index", M}});  // warm-up: the first 512-wide step maps its memory
    for (int i = 0; i < M; ++i) {
      settle();
      auto r = w.call({{"op", "step"}, {"plan", "fixed"}, {"index", i}});
      fixed_t.push_back(r["s"].get<double>());
    }
    w.finish();
    const double fixed_epoch = median(fixed_t) * static_cast<double>(info["fixed"]["batches"].get<size_t>());
    fig("dynamic_padding_speedup").value = fixed_epoch / dyn_epoch;
    const double pos_fixed = info["fixed"]["positions"].get<double>(), pos_dyn = info["dynamic"]["positions"].get<double>();
    details["padding"] = {{"rows", info["rows"]},
                          {"real_tokens", info["tokens"]},
                          {"batches", n},
                          {"positions_fixed", pos_fixed},
                          {"positions_dynamic", pos_dyn},
                          {"tokenize_s", info["tokenize_s"]},
                          {"fixed_step_s", fixed_t},
                          {"dynamic_samples", dyn_samples},
                          {"epoch_fixed_s", fixed_epoch},
                          {"epoch_dynamic_s", dyn_epoch}};
    fmt::print("  {} rows, {} real tokens; positions fed: {:.0f} padded to 512, {:.0f} dynamic ({:.1f}x fewer)\n",
               info["rows"].get<int64_t>(), info["tokens"].get<int64_t>(), pos_fixed, pos_dyn, pos_fixed / pos_dyn);
    fmt::print("  step at 512: {:.2f} s (median of {}); dynamic steps sampled at {} width quantiles\n", median(fixed_t), M, K);
    fmt::print("  epoch ({} steps), extrapolated: padded to 512 {:.0f} s, dynamic {:.0f} s\n", n, fixed_epoch, dyn_epoch);
    std::fflush(stdout);
  }

  if (o.want("tokenizers")) {
    fmt::print("\n[tokenizers] one thread, cold pass per corpus\n");
    std::fflush(stdout);
    Worker w("tokenizers", [o] { return tokenizer_handler(o); }, o);
    auto r = w.call({{"op", "run"}});
    w.finish();
    fig("wordpiece_mb_s").value = r["wordpiece_mb_s"].get<double>();
    fig("bpe_mb_s").value = r["bpe_mb_s"].get<double>();
    details["tokenizers"] = r["rows"];
    for (const auto& row : r["rows"])
      fmt::print("  {:<15} {:5.2f} MB: WordPiece {:.2f} MB/s, BPE {:.2f} MB/s (warm cache {:.2f} MB/s)\n",
                 row["corpus"].get<std::string>(), row["mb"].get<double>(), row["wordpiece_mb_s"].get<double>(),
                 row["bpe_mb_s"].get<double>(), row["bpe_warm_mb_s"].get<double>());
  }

  machine["load_average_end"] = load_average();
  print_table(figs);
  fmt::print("load average at end: {}\n", machine["load_average_end"].get<std::string>());

  if (!o.json_path.empty()) {
    json j;
    for (const auto& f : figs) {
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
    fmt::print("wrote {}\n", o.json_path);
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "lora_bench: " << e.what() << "\n";
  return 1;
}

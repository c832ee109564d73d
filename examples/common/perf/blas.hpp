// Which BLAS LibTorch's CPU matmuls run on, how many threads it uses, and how fast it is.
//
// LibTorch built against the system BLAS (Debian's libtorch is: libblas.so.3, chosen by
// update-alternatives) silently runs about 40x slower when that alternative points at the
// reference (netlib) BLAS instead of OpenBLAS. blas_check() times a small sgemm through
// LibTorch and returns a warning to print when it is slow. The library itself never prints;
// the example programs and bench/lora_bench print the warning at start-up.
//
//   auto check = perf::blas_check();
//   if (!check.warning.empty()) std::cerr << check.warning << "\n";
//
// The library is found by resolving the `sgemm_` symbol LibTorch calls (dladdr), so this works
// for a dynamically linked BLAS; a BLAS linked into libtorch_cpu.so itself (MKL in the PyTorch
// binaries) is named by its version function when it exports one.
#pragma once

#include <dlfcn.h>

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>

namespace perf {

/// The BLAS library behind LibTorch's CPU sgemm, as "OpenBLAS (0.3.21 ... Haswell) path",
/// "reference BLAS (netlib) path", ... or "unknown ..." when it cannot be told. Named by the
/// file that LibTorch's `sgemm_` resolves to (what update-alternatives or LD_PRELOAD chose),
/// then by a version function when the BLAS is linked into LibTorch itself.
inline std::string blas_library() {
  std::string path;
  if (void* sym = dlsym(RTLD_DEFAULT, "sgemm_")) {
    Dl_info info{};
    if (dladdr(sym, &info) && info.dli_fname) {
      path = info.dli_fname;
      if (char* real = realpath(info.dli_fname, nullptr)) {
        path = real;
        std::free(real);
      }
    }
  }
  auto has = [&](const char* s) { return path.find(s) != std::string::npos; };
  using config_fn = char* (*)();
  auto openblas = reinterpret_cast<config_fn>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  if (has("openblas") || (path.empty() && openblas))
    return std::string("OpenBLAS") + (openblas ? std::string(" (") + openblas() + ")" : "") +
           (path.empty() ? "" : " " + path);
  if (has("mkl") || (path.empty() && dlsym(RTLD_DEFAULT, "mkl_get_version_string")))
    return "Intel MKL" + (path.empty() ? "" : " " + path);
  if (has("blis")) return "BLIS " + path;
  if (has("atlas")) return "ATLAS " + path;
  if (has("/blas/") || has("libblas.so") || has("librefblas"))
    return "reference BLAS (netlib) " + path;
  return path.empty() ? "unknown (no dynamic sgemm_ symbol: a BLAS linked into LibTorch, or MKL-DNN only)"
                      : "unknown " + path;
}

/// OpenBLAS's thread count, or -1 when the BLAS is not OpenBLAS.
inline int blas_threads() {
  using get_fn = int (*)();
  auto get = reinterpret_cast<get_fn>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  return get ? get() : -1;
}

/// Sets OpenBLAS's thread count (its own pool, separate from LibTorch's intra-op threads that
/// torch::set_num_threads controls). Returns false when the BLAS is not OpenBLAS.
inline bool set_blas_threads(int n) {
  using set_fn = void (*)(int);
  auto set = reinterpret_cast<set_fn>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (!set || n < 1) return false;
  set(n);
  return true;
}

/// What blas_check() measured.
struct BlasCheck {
  double gflops = 0;     ///< best rate of an n x n by n x n float matmul through LibTorch
  int64_t n = 256;
  std::string library;   ///< blas_library()
  int torch_threads = 0; ///< torch::get_num_threads() at the time
  int blas_threads = -1; ///< perf::blas_threads() at the time
  std::string warning;   ///< non-empty when gflops is below the threshold: print it
  bool slow() const { return !warning.empty(); }
};

/// Times an n x n x n sgemm through torch::mm on the CPU (after a warm-up, the best of a few
/// runs, about 0.1 s at most) and returns the rate, with a warning when it is below
/// `min_gflops` (an optimised BLAS does 20-100+ GFLOP/s per core at n = 256; the reference
/// BLAS about 1-3 GFLOP/s in all).
inline BlasCheck blas_check(double min_gflops = 10.0, int64_t n = 256) {
  BlasCheck r;
  r.n = n;
  r.library = blas_library();
  r.torch_threads = torch::get_num_threads();
  r.blas_threads = blas_threads();
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(12345);
  auto a = at::randn({n, n}, gen, torch::kFloat), b = at::randn({n, n}, gen, torch::kFloat);
  auto c = torch::mm(a, b);  // warm-up: thread pools, page faults
  using clock = std::chrono::steady_clock;
  double best = 1e30, total = 0;
  for (int rep = 0; rep < 50 && (rep < 3 || total < 0.1); ++rep) {
    const auto t0 = clock::now();
    torch::mm_out(c, a, b);
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    best = std::min(best, s);
    total += s;
  }
  r.gflops = 2.0 * static_cast<double>(n) * n * n / best / 1e9;
  if (r.gflops < min_gflops) {
    std::ostringstream w;
    w << "warning: LibTorch's CPU matmul ran at " << static_cast<int>(r.gflops * 10) / 10.0 << " GFLOP/s on a " << n
      << "x" << n << " sgemm (below " << min_gflops << "); BLAS: " << r.library << ". ";
    if (r.library.rfind("reference BLAS", 0) == 0)
      w << "That is the reference BLAS, about 40x slower than an optimised one: install one (Debian: apt install "
           "libopenblas0-pthread) or select it (update-alternatives --config libblas.so.3-x86_64-linux-gnu).";
    else
      w << "An unoptimised BLAS or a busy machine does this; an optimised BLAS reaches 20-100+ GFLOP/s per core.";
    r.warning = w.str();
  }
  return r;
}

}  // namespace perf

// Process-wide CPU performance settings for programs built on LibTorch: which BLAS the CPU
// matmuls run on, how fast it is and how many threads it uses (blas_check()), and a CPU
// allocator that keeps large blocks for reuse (use_caching_cpu_allocator()).
//
// LibTorch built against the system BLAS (Debian's libtorch does: libblas.so.3, chosen by
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
#include <sys/mman.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <unordered_map>

namespace perf {

/// The BLAS library behind LibTorch's CPU sgemm, as "OpenBLAS 0.3.21 ... (path)", "reference
/// BLAS (path)", ... or "unknown" when it cannot be told.
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
  using config_fn = char* (*)();
  if (auto cfg = reinterpret_cast<config_fn>(dlsym(RTLD_DEFAULT, "openblas_get_config")))
    return std::string("OpenBLAS (") + cfg() + ")" + (path.empty() ? "" : " " + path);
  if (dlsym(RTLD_DEFAULT, "mkl_get_version_string") || dlsym(RTLD_DEFAULT, "MKL_Get_Version_String"))
    return "Intel MKL" + (path.empty() ? "" : " " + path);
  if (dlsym(RTLD_DEFAULT, "bli_info_get_version_str")) return "BLIS" + (path.empty() ? "" : " " + path);
  if (path.find("/blas/libblas") != std::string::npos || path.find("libblas.so") != std::string::npos)
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

// ---------------------------------------------------------------------------------------------
// A caching CPU allocator

/// LibTorch's default CPU allocator is posix_memalign/free. glibc serves every block above its
/// mmap threshold (at most 32 MiB) with a fresh mmap, unmaps it on free and trims the heap, so
/// a training step, which allocates and frees the same large activations every step (one
/// 32 x 128 x 3072 float FFN activation is 48 MiB), touches fresh pages again each step and
/// pays a page fault per 4 KiB: on a virtual machine that is up to 20 us a page, seconds per
/// DistilBERT step (docs/performance.md). (Turning glibc's mmap off instead does not help:
/// posix_memalign then fragments the heap, which keeps growing.)
///
/// This allocator keeps blocks of 1 MiB and more for reuse: sizes are rounded up to 2 MiB, a
/// request takes the smallest free block that fits with at most 25% to spare, new blocks are
/// 2 MiB-aligned anonymous mappings marked for transparent huge pages (one fault per 2 MiB when
/// the kernel allows it), and free blocks beyond `max_free` bytes (by default as many as are
/// in use at the peak, at least 1 GiB) are unmapped, least recently freed first, so shapes
/// that keep changing (dynamic padding) cannot grow the cache without bound. Smaller blocks go
/// to posix_memalign/free as before. Thread-safe. Not a part of the LoRA library: a
/// process-wide choice for the program to make, once, at start-up.
class CachingCpuAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kMinCached = size_t{1} << 20;  ///< smaller blocks are not cached
  static constexpr size_t kGranule = size_t{2} << 20;    ///< block sizes are multiples of this

  struct Stats {
    size_t mapped = 0;  ///< bytes held from the kernel (in use + free)
    size_t free = 0;    ///< bytes cached, free for reuse
    size_t peak_in_use = 0;
    size_t hits = 0, misses = 0, evictions = 0;
  };

  /// The one instance (deleters are plain function pointers, so they need a global).
  static CachingCpuAllocator& instance() {
    static auto* a = new CachingCpuAllocator();  // never destroyed: tensors may outlive main()
    return *a;
  }

  // LibTorch 1.x-2.2 declare allocate() const, later versions non-const: define both, one
  // of them overrides.
  c10::DataPtr allocate(size_t n) const { return const_cast<CachingCpuAllocator*>(this)->get(n); }
  c10::DataPtr allocate(size_t n) { return get(n); }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  // Pure virtual in LibTorch >= 2.3, absent before.
  void copy_data(void* dest, const void* src, size_t count) const { std::memcpy(dest, src, count); }

  /// 0: the default cap (the peak bytes in use, at least 1 GiB).
  void set_max_free(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    max_free_ = bytes;
  }
  Stats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }
  /// Unmaps every free block.
  void empty_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    while (!lru_.empty()) evict_oldest();
  }

 private:
  struct Free {
    void* p;
    size_t size;
  };
  CachingCpuAllocator() = default;

  static void release(void* p) { instance().put(p); }

  c10::DataPtr get(size_t n) {
    void* p = nullptr;
    if (n < kMinCached) {
      if (posix_memalign(&p, 64, n > 0 ? n : 1) != 0) throw std::bad_alloc();
      return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t size = (n + kGranule - 1) / kGranule * kGranule;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_size_.lower_bound(size);
    if (it != by_size_.end() && it->first <= size + size / 4) {
      auto node = it->second;
      p = node->p;
      in_use_[p] = node->size;
      stats_.free -= node->size;
      lru_.erase(node);
      by_size_.erase(it);
      ++stats_.hits;
    } else {
      p = map(size);
      in_use_[p] = size;
      stats_.mapped += size;
      ++stats_.misses;
    }
    in_use_bytes_ += in_use_[p];
    stats_.peak_in_use = std::max(stats_.peak_in_use, in_use_bytes_);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void put(void* p) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = in_use_.find(p);
      if (it != in_use_.end()) {
        const size_t size = it->second;
        in_use_.erase(it);
        in_use_bytes_ -= size;
        lru_.push_back({p, size});
        by_size_.emplace(size, std::prev(lru_.end()));
        stats_.free += size;
        const size_t cap = max_free_ ? max_free_ : std::max(stats_.peak_in_use, size_t{1} << 30);
        while (stats_.free > cap && !lru_.empty()) evict_oldest();
        return;
      }
    }
    std::free(p);  // a small block
  }

  static void* map(size_t size) {
    // Over-allocate by one granule and trim, for a 2 MiB-aligned block (huge-page friendly).
    const size_t len = size + kGranule;
    void* raw = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) throw std::bad_alloc();
    auto base = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (base + kGranule - 1) / kGranule * kGranule;
    if (aligned > base) munmap(raw, aligned - base);
    const uintptr_t end = base + len, used_end = aligned + size;
    if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
#ifdef MADV_HUGEPAGE
    madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(aligned);
  }

  void evict_oldest() {
    const Free f = lru_.front();
    for (auto range = by_size_.equal_range(f.size); range.first != range.second; ++range.first)
      if (range.first->second == lru_.begin()) {
        by_size_.erase(range.first);
        break;
      }
    lru_.pop_front();
    munmap(f.p, f.size);
    stats_.free -= f.size;
    stats_.mapped -= f.size;
    ++stats_.evictions;
  }

  mutable std::mutex mu_;
  std::unordered_map<void*, size_t> in_use_;                // block -> size
  std::list<Free> lru_;                                      // free blocks, least recently freed first
  std::multimap<size_t, std::list<Free>::iterator> by_size_;  // free blocks by size
  size_t in_use_bytes_ = 0;
  size_t max_free_ = 0;
  Stats stats_;
};

/// Makes CachingCpuAllocator LibTorch's CPU allocator for every tensor allocated from now on
/// (tensors that exist keep their own deleter). Call once, at start-up. Returns the instance,
/// for its stats().
inline CachingCpuAllocator& use_caching_cpu_allocator() {
  auto& a = CachingCpuAllocator::instance();
  c10::SetCPUAllocator(&a, /*priority=*/100);
  return a;
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
      << "x" << n << " sgemm (below " << min_gflops << "). The BLAS in use is " << r.library
      << ". If that is the reference BLAS, matmuls are about 40x slower than they should be: install an optimised "
         "one (Debian: apt install libopenblas0-pthread, or select it with update-alternatives --config "
         "libblas.so.3-x86_64-linux-gnu). A busy machine can also cause this.";
    r.warning = w.str();
  }
  return r;
}

}  // namespace perf

// A CPU allocator for LibTorch that keeps large blocks for reuse (use_caching_cpu_allocator()).
#pragma once

#include <sys/mman.h>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <new>
#include <unordered_map>

namespace perf {


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

}  // namespace perf

// Stable hashing for per-layer seeds: the same (seed, layer path, adapter name) gives the same
// adapter on every platform and in every traversal order.
#pragma once

#include <cstdint>
#include <string>

namespace lora::detail {

inline uint64_t fnv1a(const std::string& s, uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/// The generator seed of one adapter on one layer.
inline uint64_t layer_seed(uint64_t seed, const std::string& layer, const std::string& adapter) {
  return splitmix64(seed ^ fnv1a(adapter, fnv1a(layer)));
}

}  // namespace lora::detail

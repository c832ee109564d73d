// What the two study tasks share: finding their files (and saying what is missing and how to
// fetch it, before any training), a seeded batch plan per epoch, and tensors to sweep batches.
#pragma once

#include <lora/error.hpp>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "errors.hpp"
#include "data/batching.hpp"
#include "sweep/task.hpp"

namespace tasks {

namespace fs = std::filesystem;

/// Throws examples::FileError listing every path in `paths` that does not exist, with the command
/// that fetches them. Called before any training.
inline void require_files(const std::vector<fs::path>& paths, const std::string& data_dir) {
  std::string missing;
  for (const auto& p : paths)
    if (!fs::exists(p)) missing += "\n  " + p.string();
  if (!missing.empty())
    throw examples::FileError("missing files:" + missing + "\nFetch them with: scripts/fetch-assets.sh " + data_dir +
                              "\n(or pass --model-dir / --data-dir pointing at folders that hold them)");
}

/// The first of `candidates` that exists, else the first (so require_files names it).
inline fs::path first_existing(const std::vector<fs::path>& candidates) {
  for (const auto& c : candidates)
    if (fs::exists(c)) return c;
  return candidates.front();
}

/// The generator of one epoch's batch order: the same (seed, epoch) gives the same batches.
inline std::mt19937_64 epoch_rng(uint64_t seed, int64_t epoch) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(epoch)};
  return std::mt19937_64(seq);
}

/// A data::Batch as the sweep engine's named tensors.
inline sweep::Batch named(const data::Batch& b) {
  return {{"input_ids", b.input_ids}, {"attention_mask", b.attention_mask}, {"labels", b.labels}};
}

/// "dynamic" (pad to the longest of each random batch: the seed's batches, less padding),
/// "bucketed" (batches of similar lengths: least padding, other batch composition) or
/// "fixed" (pad every row to --max-len, as the seed study did).
inline void apply_padding(const std::string& mode, data::BatchOptions& o) {
  if (mode == "dynamic") {
    o.padding = data::Padding::Dynamic;
  } else if (mode == "bucketed") {
    o.padding = data::Padding::Dynamic;
    o.bucket_batches = 50;
  } else if (mode == "fixed") {
    o.padding = data::Padding::Fixed;
  } else {
    throw examples::UsageError("--padding: '" + mode + "' is not one of dynamic, bucketed, fixed");
  }
}

}  // namespace tasks

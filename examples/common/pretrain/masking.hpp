// Masked-LM inputs as Hugging Face's DataCollatorForLanguageModeling makes them
// (torch_mask_tokens, mlm_probability 0.15), on the host, from a seed:
//   - every token that is not special is chosen with probability 0.15 (independently: a
//     Bernoulli draw per token, so a batch holds about, not exactly, 15%); special tokens
//     ([PAD] [UNK] [CLS] [SEP] [MASK]: the tokenizer's all_special_ids, which the collator
//     excludes when the batch carries no special_tokens_mask) are never chosen;
//   - of the chosen: with probability 0.8 the input becomes [MASK]; else with probability 0.5
//     (10% of the chosen) a token id drawn uniformly from [0, vocab_size); else (10%) it is
//     left unchanged;
//   - the labels are the original ids at the chosen positions (the loss is taken there only).
// The draws come from SplitMix64 seeded per batch (MaskRng), not from torch's generator: the
// same seed gives the same masks on every platform, and a resumed run redraws exactly the masks
// an uninterrupted one drew.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/corpus.hpp"
#include "errors.hpp"

namespace pretrain {

/// A SplitMix64 generator: uniform doubles in [0, 1) and integers in [0, n).
class MaskRng {
 public:
  explicit MaskRng(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    std::uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, 1), 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  /// Uniform in [0, n), n > 0 (rejection, as data::uniform_below).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t threshold = (0 - n) % n;
    while (true) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % n;
    }
  }

 private:
  std::uint64_t state_;
};

/// The collator's settings.
struct MaskingOptions {
  double probability = 0.15;  ///< share of the non-special tokens chosen
  double mask_share = 0.8;    ///< of the chosen: replaced by [MASK]
  double random_share = 0.5;  ///< of the chosen that are not masked: replaced by a random id (HF: 0.5, i.e. 10%)
  std::int64_t mask_id = 103;
  std::int64_t vocab_size = 30522;         ///< random ids are drawn from [0, vocab_size)
  std::vector<std::int64_t> special_ids;   ///< never chosen
};

/// What was done to each chosen position.
enum class MaskKind : std::uint8_t { masked, random, unchanged };

/// One masked batch: inputs (the ids with the chosen positions replaced), and for each chosen
/// position its flat index (row * T + column), label (original id) and what replaced it.
struct MaskedTokens {
  std::vector<std::int64_t> inputs;
  std::vector<std::int64_t> positions;
  std::vector<std::int64_t> labels;
  std::vector<MaskKind> kinds;
};

/// Masks `ids` (any number of tokens, e.g. a (B, T) batch flattened) with draws from `rng`.
inline MaskedTokens mask_tokens(const std::vector<std::int64_t>& ids, const MaskingOptions& o, MaskRng& rng) {
  if (!(o.probability >= 0 && o.probability <= 1) || !(o.mask_share >= 0 && o.mask_share <= 1) ||
      !(o.random_share >= 0 && o.random_share <= 1))
    throw examples::UsageError(examples::str("MLM masking: probabilities must lie in [0, 1]; got probability ",
                                             o.probability, ", mask share ", o.mask_share, ", random share ",
                                             o.random_share, "."));
  if (o.vocab_size < 1) throw examples::DataError("MLM masking: vocab_size must be positive");
  std::vector<bool> special(static_cast<std::size_t>(o.vocab_size), false);
  for (const auto id : o.special_ids)
    if (id >= 0 && id < o.vocab_size) special[static_cast<std::size_t>(id)] = true;
  MaskedTokens m;
  m.inputs = ids;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const std::int64_t id = ids[i];
    if (id < 0 || id >= o.vocab_size)
      throw examples::DataError(examples::str("MLM masking: token id ", id, " at position ", i,
                                              " is outside the vocabulary [0, ", o.vocab_size,
                                              "); the text was encoded with another tokenizer."));
    // One draw per token for the choice, as HF's bernoulli over the whole batch; the other
    // draws only for the chosen (HF draws them for every token and keeps the chosen ones: the
    // same distribution).
    if (rng.uniform() >= o.probability || special[static_cast<std::size_t>(id)]) continue;
    MaskKind kind = MaskKind::unchanged;
    if (rng.uniform() < o.mask_share) {
      kind = MaskKind::masked;
      m.inputs[i] = o.mask_id;
    } else if (rng.uniform() < o.random_share) {
      kind = MaskKind::random;
      m.inputs[i] = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(o.vocab_size)));
    }
    m.positions.push_back(static_cast<std::int64_t>(i));
    m.labels.push_back(id);
    m.kinds.push_back(kind);
  }
  return m;
}

}  // namespace pretrain

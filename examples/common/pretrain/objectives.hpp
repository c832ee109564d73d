// The pretraining objectives of /work/shared/pretraining.md on the examples' own models
// (models/distilbert.hpp, models/gpt2.hpp), and how a base is evaluated:
//   - DistilBERT: masked LM (pretrain/masking.hpp) plus the bag-of-words objective at [CLS],
//     summed (the second with weight bow_weight, 1 in the recipe). One encoder pass; the MLM
//     head (vocab_transform, activation, vocab_layer_norm, vocab_projector) runs only on the
//     chosen positions and the [CLS] rows: the projection onto the 30,522-word vocabulary, the
//     main cost, is never computed for the other ~85% of the tokens.
//       MLM: cross entropy at the chosen positions, averaged over them (HF's ignore_index mean;
//         0 for a batch where nothing was chosen).
//       Bag of words: the head on the [CLS] output predicts the block's token distribution p
//         (counts of its original tokens except [CLS], [SEP], [PAD], normalised); loss
//         -sum_v p_v log softmax(logits)_v, averaged over the blocks.
//   - GPT-2: next-token cross entropy over each block (models::causal_lm_loss).
//   - Held-out loss (eval mode, no gradients): DistilBERT's MLM loss over every chosen token of
//     the held-out blocks (masks drawn from a fixed seed, the same at every evaluation) plus
//     bow_weight x the mean bag-of-words loss; GPT-2's token-weighted next-token loss.
//   - [CLS] spread: the per-dimension standard deviation (unbiased) of the first token's
//     encoder output over the first 32 held-out blocks in eval mode, averaged over dimensions.
//     A base whose [CLS] output is constant across inputs has spread 0, and a classifier on
//     [CLS] cannot train on it. For GPT-2, which has no [CLS], the last token's output (after
//     ln_f: what GPT2ForSequenceClassification reads) stands in.
// Base wraps a model of either layout with what the training loop needs from it.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "data/corpus.hpp"
#include "errors.hpp"
#include "models/checkpoint.hpp"
#include "models/distilbert.hpp"
#include "models/export.hpp"
#include "models/gpt2.hpp"
#include "pretrain/masking.hpp"
#include "pretrain/recipe.hpp"

namespace pretrain {

/// The ids of `count` consecutive training samples from sample `first` (data/corpus.hpp,
/// rule 6), as one row-major (count, T) buffer.
inline std::vector<int64_t> sample_blocks(const data::Blocks& train, data::BlockOrder& order, uint64_t first,
                                          int64_t count) {
  std::vector<int64_t> ids;
  ids.reserve(static_cast<size_t>(count * train.size));
  for (int64_t i = 0; i < count; ++i) {
    const int64_t* b = train.block(order.at(first + static_cast<uint64_t>(i)));
    ids.insert(ids.end(), b, b + train.size);
  }
  return ids;
}

/// A masked-LM batch as tensors.
struct MlmBatch {
  torch::Tensor input_ids;    ///< (B, T) int64, after masking
  torch::Tensor positions;    ///< (N) int64: flat indices b * T + t of the chosen tokens
  torch::Tensor labels;       ///< (N) int64: their original ids
  torch::Tensor bow_ids;      ///< (B, T) int64: the original ids
  torch::Tensor bow_weights;  ///< (B, T) float: 1 / n_b on the n_b counted tokens of row b, else 0
};

/// Masks `ids` ((rows, T) row-major) and builds the bag-of-words targets, which count every
/// token except those in `bow_excluded`.
inline MlmBatch make_mlm_batch(const std::vector<int64_t>& ids, int64_t rows, int64_t T, const MaskingOptions& o,
                               MaskRng& rng, const std::vector<int64_t>& bow_excluded) {
  const auto masked = mask_tokens(ids, o, rng);
  auto longs = torch::TensorOptions().dtype(torch::kLong);
  MlmBatch b;
  b.input_ids = torch::tensor(masked.inputs, longs).view({rows, T});
  b.positions = torch::tensor(masked.positions, longs);
  b.labels = torch::tensor(masked.labels, longs);
  b.bow_ids = torch::tensor(ids, longs).view({rows, T});
  std::vector<float> w(ids.size(), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    int64_t n = 0;
    for (int64_t t = 0; t < T; ++t)
      n += std::find(bow_excluded.begin(), bow_excluded.end(), ids[static_cast<size_t>(r * T + t)]) == bow_excluded.end();
    for (int64_t t = 0; t < T; ++t) {
      const auto i = static_cast<size_t>(r * T + t);
      if (n > 0 && std::find(bow_excluded.begin(), bow_excluded.end(), ids[i]) == bow_excluded.end())
        w[i] = 1.0f / static_cast<float>(n);
    }
  }
  b.bow_weights = torch::tensor(w).view({rows, T});
  return b;
}

/// DistilBERT's MLM head on hidden states (..., C) -> logits (..., V).
inline torch::Tensor mlm_head(models::DistilBertForMaskedLMImpl& m, const torch::Tensor& h) {
  return m.vocab_projector(m.vocab_layer_norm(models::activate(m.config.activation, m.vocab_transform(h))));
}

/// Sums over one batch: MLM cross entropy summed over the chosen tokens, their number, and the
/// bag-of-words loss summed over the rows (0-dim tensors; bow_sum undefined without it).
struct MlmSums {
  torch::Tensor mlm_sum, bow_sum;
  int64_t chosen = 0, rows = 0;
};

/// One encoder pass; the head on the chosen positions and (with `bow`) the [CLS] rows only.
inline MlmSums mlm_sums(models::DistilBertForMaskedLMImpl& m, const MlmBatch& b, bool bow) {
  namespace F = torch::nn::functional;
  const auto B = b.input_ids.size(0), T = b.input_ids.size(1);
  auto h = m.distilbert(b.input_ids);                        // (B, T, C)
  const auto C = h.size(2);
  const int64_t N = b.positions.size(0);
  std::vector<torch::Tensor> rows;
  if (N > 0) rows.push_back(h.reshape({B * T, C}).index_select(0, b.positions));  // (N, C)
  if (bow) rows.push_back(h.select(1, 0));                                          // (B, C)
  MlmSums s;
  s.chosen = N;
  s.rows = B;
  s.mlm_sum = torch::zeros({}, h.options());
  if (rows.empty()) return s;
  auto logits = mlm_head(m, torch::cat(rows));  // (N [+ B], V)
  if (N > 0)
    s.mlm_sum = F::cross_entropy(logits.narrow(0, 0, N), b.labels, F::CrossEntropyFuncOptions().reduction(torch::kSum));
  if (bow) {
    auto log_p = torch::log_softmax(logits.narrow(0, N, B), -1);  // (B, V)
    s.bow_sum = -(log_p.gather(1, b.bow_ids) * b.bow_weights).sum();
  }
  return s;
}

/// What a training step's loss is made of (0-dim tensors; bow undefined for GPT-2 or without it).
struct StepLoss {
  torch::Tensor total, lm, bow;
};

/// Held-out figures.
struct Evaluation {
  double loss = 0;  ///< lm + bow_weight x bow (GPT-2: lm)
  double lm = 0;    ///< MLM loss per chosen token / next-token loss per predicted token
  std::optional<double> bow;
  double spread = 0;  ///< [CLS] spread
};

/// The objective settings of a base.
struct ObjectiveOptions {
  MaskingOptions masking;            ///< DistilBERT
  double bow_weight = 1.0;           ///< 0: no bag-of-words objective
  std::vector<int64_t> bow_excluded; ///< ids the bag of words does not count ([CLS], [SEP], [PAD])
  uint64_t seed = 0;                 ///< the run's seed (held-out masks derive from it)
  int64_t spread_blocks = 32;
};

/// A DistilBertForMaskedLM or a GPT2LMHeadModel being pretrained.
class Base {
 public:
  static constexpr uint64_t kMaskTag = 0x6d61736bULL;      // "mask"
  static constexpr uint64_t kHeldOutTag = 0x68656c64ULL;   // "held"

  explicit Base(const models::DistilBertConfig& c, ObjectiveOptions o) : distilbert_(models::DistilBertForMaskedLM(c)), o_(std::move(o)) {}
  explicit Base(const models::GPT2Config& c, ObjectiveOptions o) : gpt2_(models::GPT2LMHeadModel(c)), o_(std::move(o)) {}

  bool is_distilbert() const { return distilbert_.has_value(); }
  torch::nn::Module& module() { return is_distilbert() ? static_cast<torch::nn::Module&>(**distilbert_) : **gpt2_; }
  std::string layout() const { return is_distilbert() ? "distilbert" : "gpt2"; }
  models::DistilBertForMaskedLM& distilbert() { return *distilbert_; }
  models::GPT2LMHeadModel& gpt2() { return *gpt2_; }
  const ObjectiveOptions& options() const { return o_; }

  /// HF's initialisation (recipe.hpp) from `seed`.
  void init(uint64_t seed) {
    if (is_distilbert()) {
      const auto& c = (*distilbert_)->config;
      init_weights(module(), seed, [&](const std::string&) { return c.initializer_range; },
                   {{"distilbert.embeddings.word_embeddings.weight", c.pad_token_id}});
    } else {
      const auto& c = (*gpt2_)->config;
      const double proj_std = c.initializer_range / std::sqrt(2.0 * static_cast<double>(c.n_layer));
      init_weights(module(), seed, [&](const std::string& name) {
        return models::detail::ends_with(name, "c_proj.weight") ? proj_std : c.initializer_range;
      });
    }
  }

  /// The training loss of one batch of blocks ((rows, T) row-major), for optimizer step
  /// `step` (from 0: the masks derive from the seed and the step).
  StepLoss train_loss(const std::vector<int64_t>& ids, int64_t rows, int64_t T, int64_t step) {
    if (is_distilbert()) {
      MaskRng rng(data::derive_seed(o_.seed, kMaskTag, static_cast<uint64_t>(step)));
      const auto batch = make_mlm_batch(ids, rows, T, o_.masking, rng, o_.bow_excluded);
      const bool bow = o_.bow_weight > 0;
      const auto s = mlm_sums(**distilbert_, batch, bow);
      StepLoss l;
      l.lm = s.chosen > 0 ? s.mlm_sum / static_cast<double>(s.chosen) : s.mlm_sum;
      l.total = l.lm;
      if (bow) {
        l.bow = s.bow_sum / static_cast<double>(s.rows);
        l.total = l.total + o_.bow_weight * l.bow;
      }
      return l;
    }
    auto input = torch::tensor(ids, torch::kLong).view({rows, T});
    StepLoss l;
    l.lm = models::causal_lm_loss((*gpt2_)->forward(input), input);
    l.total = l.lm;
    return l;
  }

  /// Held-out loss and [CLS] spread (eval mode, no gradients; train mode again afterwards).
  Evaluation evaluate(const data::Blocks& held_out, int64_t batch_size) {
    torch::NoGradGuard no_grad;
    module().eval();
    struct TrainAgain {
      torch::nn::Module& m;
      ~TrainAgain() { m.train(); }
    } restore{module()};
    Evaluation e;
    const int64_t n = held_out.count(), T = held_out.size;
    if (n == 0) throw examples::DataError("evaluation: no held-out block (give --held-out 1 or more)");
    MaskRng rng(data::derive_seed(o_.seed, kHeldOutTag, 0));
    double lm_sum = 0, bow_sum = 0;
    int64_t lm_count = 0;
    for (int64_t first = 0; first < n; first += batch_size) {
      const int64_t rows = std::min(batch_size, n - first);
      std::vector<int64_t> ids(held_out.block(first), held_out.block(first) + rows * T);
      if (is_distilbert()) {
        const auto batch = make_mlm_batch(ids, rows, T, o_.masking, rng, o_.bow_excluded);
        const auto s = mlm_sums(**distilbert_, batch, o_.bow_weight > 0);
        lm_sum += s.mlm_sum.item<double>();
        lm_count += s.chosen;
        if (s.bow_sum.defined()) bow_sum += s.bow_sum.item<double>();
      } else {
        auto input = torch::tensor(ids, torch::kLong).view({rows, T});
        const auto nll = models::causal_lm_nll((*gpt2_)->forward(input), input);
        lm_sum += nll.nll;
        lm_count += nll.tokens;
      }
    }
    e.lm = lm_count > 0 ? lm_sum / static_cast<double>(lm_count) : 0.0;
    e.loss = e.lm;
    if (is_distilbert() && o_.bow_weight > 0) {
      e.bow = bow_sum / static_cast<double>(n);
      e.loss += o_.bow_weight * *e.bow;
    }
    e.spread = spread(held_out);
    return e;
  }

  /// The [CLS] spread over the first spread_blocks held-out blocks (at least 2 are needed).
  double spread(const data::Blocks& held_out) {
    torch::NoGradGuard no_grad;
    const int64_t n = std::min<int64_t>(o_.spread_blocks, held_out.count()), T = held_out.size;
    if (n < 2) return 0.0;
    const bool was_training = module().is_training();
    module().eval();
    auto input = torch::tensor(std::vector<int64_t>(held_out.block(0), held_out.block(0) + n * T), torch::kLong).view({n, T});
    const auto first = is_distilbert() ? (*distilbert_)->distilbert(input).select(1, 0)
                                       : (*gpt2_)->transformer(input).select(1, T - 1);  // (n, C)
    if (was_training) module().train();
    return first.std(at::IntArrayRef{0}, /*unbiased=*/true, /*keepdim=*/false).mean().item<double>();
  }

  /// The vocabulary logits of `input_ids` (B, T) at every position (eval mode is the caller's).
  torch::Tensor logits(const torch::Tensor& input_ids) {
    return is_distilbert() ? (*distilbert_)->forward(input_ids).logits : (*gpt2_)->forward(input_ids);
  }

  /// The Hub layout into `dir`: config.json and model.safetensors (models/export.hpp).
  void export_to(const std::string& dir) {
    if (is_distilbert())
      models::export_merged(*distilbert_, dir);
    else
      models::export_merged(*gpt2_, dir);
  }

 private:
  std::optional<models::DistilBertForMaskedLM> distilbert_;
  std::optional<models::GPT2LMHeadModel> gpt2_;
  ObjectiveOptions o_;
};

}  // namespace pretrain

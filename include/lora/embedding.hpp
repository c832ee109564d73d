// lora::Embedding: a drop-in for torch::nn::Embedding (it is one: same options, same parameter
// "weight" (num, dim), so base checkpoints load unchanged) that can carry LoRA adapters:
//   y = embedding(x, W) + sum over active adapters of s * embedding(x, A^T) B^T
// with A (r, num) and B (dim, r), PEFT's layout (kinds/embedding.hpp: delta W = s (B A)^T;
// padding_idx and max_norm as described there). With no adapter it computes exactly what
// torch::nn::Embedding does. Adapters are managed as on lora::Linear (detail/adapter_host.hpp).
#pragma once

#include <torch/nn/modules/embedding.h>
#include <torch/nn/options/embedding.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "layer_adapter.hpp"
#include "detail/adapter_host.hpp"
#include "kinds/embedding.hpp"

namespace lora {

class EmbeddingImpl : public torch::nn::EmbeddingImpl, public detail::AdapterHost {
 public:
  EmbeddingImpl(int64_t num_embeddings, int64_t embedding_dim)
      : EmbeddingImpl(torch::nn::EmbeddingOptions(num_embeddings, embedding_dim)) {}
  explicit EmbeddingImpl(const torch::nn::EmbeddingOptions& options_) : torch::nn::EmbeddingImpl(options_) {
    std::optional<int64_t> pad;
    if (options.padding_idx()) pad = *options.padding_idx();
    kind_ = std::make_shared<const kinds::Embedding>(pad, options.scale_grad_by_freq());
  }

  /// ids (...) -> (..., dim)
  torch::Tensor forward(const torch::Tensor& input) {
    auto y = torch::nn::EmbeddingImpl::forward(input);  // (..., dim)
    std::vector<const LayerAdapter*> pending;
    if (const auto* r = detail::current_routing()) {  // rows with their own adapters (lora/routing.hpp)
      const auto rows = routed_rows(*r, input);
      if (!rows.uniform()) return add_routed(rows, y, input, is_training());
      pending = rows.uniform_adapters();
    } else {
      pending = bank().pending();
    }
    detail::ForwardInput in{input, weight, {}, is_training()};
    if (pending.empty()) return y;
    const auto dt = y.scalar_type();
    y = y.to(pending.front()->A.scalar_type());  // float32 adapters on a half base: cast at the edges
    for (const LayerAdapter* a : pending) y = a->variant().forward(*a, y, in);
    return y.to(dt);
  }

  std::shared_ptr<const detail::Kind> kind() const override { return kind_; }

  void pretty_print(std::ostream& stream) const override {
    stream << "lora::Embedding(num_embeddings=" << options.num_embeddings()
           << ", embedding_dim=" << options.embedding_dim();
    if (options.padding_idx()) stream << ", padding_idx=" << *options.padding_idx();
    for (const auto& kv : bank().adapters())
      stream << ", " << kv.first << "=(r=" << kv.second.rank << ", scale=" << kv.second.scale
             << (kv.second.merged() ? ", merged" : "") << ")";
    stream << ")";
  }

 protected:
  torch::nn::Module& adapter_owner() override { return *this; }
  torch::Tensor base_weight() const override { return weight; }

 private:
  std::shared_ptr<const detail::Kind> kind_;
};

TORCH_MODULE(Embedding);

}  // namespace lora

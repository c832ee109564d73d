// lora::Conv1d, lora::Conv2d, lora::Conv3d: drop-ins for torch::nn::Conv1d/2d/3d (they are
// ones: same options, same parameters "weight" (out, in, k...) and "bias", so base checkpoints
// load unchanged) that can carry LoRA adapters:
//   y = conv(x, W) + b + sum over active adapters of s * B(A(dropout(x)))
// with A a convolution (r, in, k...) with the layer's kernel, stride, padding and dilation and B
// a 1x1 convolution (out, r, 1...), PEFT's layout (kinds/conv.hpp, which also says what is
// refused: groups > 1, and padding modes other than zeros here). With no adapter it computes
// exactly what torch::nn::ConvNd does. Adapters are managed as on lora::Linear
// (detail/adapter_host.hpp).
#pragma once

#include <torch/nn/modules/conv.h>
#include <torch/nn/options/conv.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "layer_adapter.hpp"
#include "detail/adapter_host.hpp"
#include "kinds/conv.hpp"

namespace lora {

namespace detail {

/// The drop-in convolution of dimension D over LibTorch's `Base` (torch::nn::Conv2dImpl, ...).
template <size_t D, typename Base>
class ConvImpl : public Base, public AdapterHost {
 public:
  explicit ConvImpl(const torch::nn::ConvOptions<D>& options_)
      : Base(options_), kind_(std::make_shared<const kinds::Conv<D>>(this->options)) {}

  /// (N, in, spatial...) -> (N, out, spatial'...)
  torch::Tensor forward(const torch::Tensor& input) {
    auto y = Base::forward(input);
    std::vector<const LayerAdapter*> pending;
    if (const auto* r = current_routing()) {  // rows with their own adapters (lora/routing.hpp)
      const auto rows = this->routed_rows(*r, input);
      if (!rows.uniform()) return this->add_routed(rows, y, input, this->is_training());
      pending = rows.uniform_adapters();
    } else {
      pending = this->bank().pending();
    }
    if (pending.empty()) return y;
    const auto dt = y.scalar_type(), at = pending.front()->A.scalar_type();  // cast at the edges
    ForwardInput in{input.to(at), this->weight, {}, this->is_training()};
    y = y.to(at);
    for (const LayerAdapter* a : pending) y = a->variant().forward(*a, y, in);
    return y.to(dt);
  }

  std::shared_ptr<const Kind> kind() const override { return kind_; }

  void pretty_print(std::ostream& stream) const override {
    stream << "lora::" << kind_->name() << "(" << this->options.in_channels() << ", " << this->options.out_channels()
           << ", kernel_size=" << this->options.kernel_size() << ", stride=" << this->options.stride();
    for (const auto& kv : this->bank().adapters())
      stream << ", " << kv.first << "=(r=" << kv.second.rank << ", scale=" << kv.second.scale
             << (kv.second.merged() ? ", merged" : "") << ")";
    stream << ")";
  }

 protected:
  torch::nn::Module& adapter_owner() override { return *this; }
  torch::Tensor base_weight() const override { return this->weight; }

 private:
  std::shared_ptr<const Kind> kind_;
};

}  // namespace detail

class Conv1dImpl : public detail::ConvImpl<1, torch::nn::Conv1dImpl> {
 public:
  Conv1dImpl(int64_t in, int64_t out, torch::ExpandingArray<1> kernel_size)
      : Conv1dImpl(torch::nn::Conv1dOptions(in, out, kernel_size)) {}
  explicit Conv1dImpl(const torch::nn::Conv1dOptions& options_) : ConvImpl(options_) {}
};
class Conv2dImpl : public detail::ConvImpl<2, torch::nn::Conv2dImpl> {
 public:
  Conv2dImpl(int64_t in, int64_t out, torch::ExpandingArray<2> kernel_size)
      : Conv2dImpl(torch::nn::Conv2dOptions(in, out, kernel_size)) {}
  explicit Conv2dImpl(const torch::nn::Conv2dOptions& options_) : ConvImpl(options_) {}
};
class Conv3dImpl : public detail::ConvImpl<3, torch::nn::Conv3dImpl> {
 public:
  Conv3dImpl(int64_t in, int64_t out, torch::ExpandingArray<3> kernel_size)
      : Conv3dImpl(torch::nn::Conv3dOptions(in, out, kernel_size)) {}
  explicit Conv3dImpl(const torch::nn::Conv3dOptions& options_) : ConvImpl(options_) {}
};

TORCH_MODULE(Conv1d);
TORCH_MODULE(Conv2d);
TORCH_MODULE(Conv3d);

}  // namespace lora

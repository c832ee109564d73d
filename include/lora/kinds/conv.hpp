// The convolution kinds (lora::Conv1d/2d/3d, torch::nn::Conv1d/2d/3d), as PEFT lays them out:
// A is a convolution (r, in, k...) with the layer's kernel, stride, padding and dilation, B a
// 1x1 convolution (out, r, 1...): the branch is s * B(A(dropout(x))). The matrix view of W
// (out, in, k...) is W.view(out, in * k...), so delta W = s * (B A) reshaped, which is PEFT's
// merge formula (its 1x1 special case and its conv of A^T with B give the same numbers).
// Dilation: A gets the layer's dilation, so that the drop-in path computes exactly what the
// merged weight computes. PEFT's own forward gives A no dilation, so for a dilated layer its
// unmerged forward and its merged weight differ; a PEFT file means its merge (delta W above),
// which is what this library computes. groups > 1 is refused (PEFT's grouped layout differs),
// and on the drop-in path so are padding modes other than zeros (the compatibility path,
// whose weight is merged, supports every padding mode).
#pragma once

#include <torch/enum.h>
#include <torch/nn/functional/conv.h>
#include <torch/nn/options/conv.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "../layer_adapter.hpp"
#include "../detail/routing.hpp"
#include "../detail/kind.hpp"
#include "../functional.hpp"

namespace lora::kinds {

template <size_t D>
class Conv final : public detail::Kind {
 public:
  /// The options the convolution module holds (torch::nn::Conv2dImpl::options, ...).
  explicit Conv(torch::nn::detail::ConvNdOptions<D> options) : options_(std::move(options)) {}

  std::string name() const override { return "Conv" + std::to_string(D) + "d"; }
  std::vector<int64_t> a_shape(int64_t r, int64_t /*in_m*/) const override {
    std::vector<int64_t> s = {r, options_.in_channels() / options_.groups()};
    for (const auto k : *options_.kernel_size()) s.push_back(k);
    return s;
  }
  std::vector<int64_t> b_shape(int64_t out_m, int64_t r) const override {
    std::vector<int64_t> s = {out_m, r};
    s.resize(2 + D, 1);
    return s;
  }
  std::string unsupported(bool reparametrized) const override {
    if (options_.groups() > 1)
      return "groups = " + std::to_string(options_.groups()) +
             " (grouped convolutions are not supported: PEFT's layout for them differs)";
    const std::string mode = torch::enumtype::get_enum_name(options_.padding_mode());
    if (!reparametrized && mode != "kZeros")
      return "padding_mode " + mode + " on lora::" + name() + " (the drop-in supports zeros only; a plain torch::nn::" +
             name() + " supports every padding mode)";
    return "";
  }

  /// x (N, in, spatial...), y (N, out, spatial'...).
  torch::Tensor add_branch(const LayerAdapter& a, const torch::Tensor& y, const torch::Tensor& x,
                           bool training) const override {
    const auto dropped = detail::dropped_input(x, a.dropout, training, {});
    const auto& xd = dropped.defined() ? dropped : x;
    const auto h = conv(xd, a.A, options_.stride(), options_.padding(), options_.dilation());  // (N, r, spatial'...)
    return y + conv(h, a.B, 1, 0, 1).mul_(a.scale);                                           // (N, out, spatial'...)
  }

  std::string unroutable() const override { return ""; }
  /// x (N, in, spatial...), y (N, out, spatial'...). Every adapter's A runs as one convolution
  /// of K R channels; row b keeps its adapter's R channels and goes through its B.
  torch::Tensor add_routed_branch(const detail::StackedAdapters& st, const torch::Tensor& slot, const torch::Tensor& y,
                                  const torch::Tensor& x, bool training) const override {
    const auto& A = st.A;  // (K+1, R, in k...)
    const auto& B = st.B;  // (K+1, out, R): s in B
    const int64_t K = static_cast<int64_t>(st.adapters.size()), R = A.size(1), n = x.size(0);
    const auto xd = detail::dropped_rows(x, st.adapters, slot, training);
    const auto h_all = conv(xd, A.narrow(0, 0, K).reshape(a_shape(K * R, 0)), options_.stride(), options_.padding(),
                            options_.dilation());                         // (N, K R, spatial'...)
    const auto rows = torch::arange(n, slot.options());
    const auto h = h_all.reshape({n, K, R, -1}).index({rows, slot.clamp_max(K - 1)});  // (N, R, S)
    return torch::baddbmm(y.reshape({n, y.size(1), -1}), B.index_select(0, slot), h)
        .view(y.sizes());  // (N, out, spatial'...); the zero slot adds 0
  }

 private:
  static torch::Tensor conv(const torch::Tensor& x, const torch::Tensor& w, torch::ExpandingArray<D> stride,
                            typename torch::nn::functional::ConvFuncOptions<D>::padding_t padding,
                            torch::ExpandingArray<D> dilation) {
    namespace F = torch::nn::functional;
    const auto opts = F::ConvFuncOptions<D>().stride(stride).padding(padding).dilation(dilation);
    if constexpr (D == 1) return F::conv1d(x, w, opts);
    else if constexpr (D == 2) return F::conv2d(x, w, opts);
    else return F::conv3d(x, w, opts);
  }

  torch::nn::detail::ConvNdOptions<D> options_;
};

}  // namespace lora::kinds

// What DistilBERT and GPT-2 share, in HF's terms: the activations their configs name
// (Activation, activate), the value that masks attention scores (mask_value), and the check
// of a forward pass's inputs (detail::check_inputs).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <limits>

#include "../errors.hpp"

namespace models {

/// The activations HF configs name (ACT2FN keys) that these models support.
enum class Activation {
  gelu,       ///< "gelu": exact, 0.5 x (1 + erf(x / sqrt 2))
  gelu_tanh,  ///< "gelu_new", "gelu_pytorch_tanh": the tanh approximation
  relu,       ///< "relu"
};

/// x through `a`.
inline torch::Tensor activate(Activation a, const torch::Tensor& x) {
  switch (a) {
    case Activation::gelu:
      return torch::gelu(x);
    case Activation::gelu_tanh:
      return torch::gelu(x, "tanh");
    case Activation::relu:
      return torch::relu(x);
  }
  return x;
}

/// The most negative finite value of dtype `t` (HF's torch.finfo(dtype).min), used to mask
/// attention scores.
inline double mask_value(c10::ScalarType t) {
  switch (t) {
    case torch::kDouble:
      return std::numeric_limits<double>::lowest();
    case torch::kHalf:
      return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    case torch::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    default:
      return std::numeric_limits<float>::lowest();
  }
}

namespace detail {

/// Throws unless input_ids is (B, T) int64 with T <= max_len and attention_mask is undefined or (B, T).
inline void check_inputs(const torch::Tensor& input_ids, const torch::Tensor& attention_mask, int64_t max_len,
                         const char* model) {
  using examples::str;
  if (input_ids.dim() != 2 || input_ids.scalar_type() != torch::kLong)
    throw examples::DataError(str(model, ": input_ids must be a (batch, tokens) int64 tensor; got ", input_ids.sizes(),
                                  " ", input_ids.scalar_type(), "."));
  if (input_ids.size(1) > max_len)
    throw examples::DataError(str(model, ": ", input_ids.size(1), " tokens exceed the model's ", max_len,
                                  " positions. Truncate the input to at most ", max_len, " tokens."));
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes())
    throw examples::DataError(str(model, ": attention_mask has shape ", attention_mask.sizes(), " but input_ids has ",
                                  input_ids.sizes(), "; they must match."));
}

}  // namespace detail

}  // namespace models

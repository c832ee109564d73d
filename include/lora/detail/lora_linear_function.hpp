// The fused lora::Linear computation, y = x W^T + b + s (xl A^T) B^T, as one autograd node
// (LoraLinearFunction) and as a plain forward for when no gradient is recorded. Used through
// lora::functional::lora_linear (functional.hpp).
#pragma once

#include <torch/autograd.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace lora::detail {

/// Whether x (W + s B A)^T beats x W^T + s (x A^T) B^T for N rows: building W + s B A costs
/// 2 out r in flops and one (out, in) write; the two thin products it replaces cost 2 N r
/// (in + out) flops and a read-modify-write pass over the (N, out) output.
inline bool merge_pays(int64_t N, int64_t in, int64_t out) { return N * (in + out) >= in * out; }

/// The forward of LoraLinearFunction, also used as is when no gradient is recorded. `xl` is
/// the LoRA branch's input (x, or dropout(x)). With xl = x and enough rows, one product with
/// the merged weight: y = x (W + s B A)^T + b; else y = x W^T + b (one addmm written straight
/// into y), then y += s (xl A^T) B^T in place. Sets `ht` = (xl A^T)^T = A xl^T, (r, N), when
/// `ht_out` is given.
///
/// The thin products are computed as (r, N) results (A x^T, not x A^T; B^T g^T, not g B):
/// the same numbers, and OpenBLAS runs that orientation about twice as fast here (each reads
/// a whole (N, in) or (N, out) activation to produce r rows; docs/performance.md).
inline torch::Tensor lora_linear_forward(const torch::Tensor& x, const torch::Tensor& xl, const torch::Tensor& W,
                                         const torch::Tensor& b, const torch::Tensor& A, const torch::Tensor& B,
                                         double scale, torch::Tensor* ht_out = nullptr) {
  const auto in = W.size(1), out = W.size(0);
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  auto y = torch::empty(sizes, x.options());
  auto y2 = y.view({-1, out});  // (N, out)
  const auto x2 = x.reshape({-1, in});
  const bool merged = xl.is_same(x) && merge_pays(x2.size(0), in, out);
  const auto Wy = merged ? torch::addmm(W, B, A, /*beta=*/1, /*alpha=*/scale) : W;  // (out, in)
  if (b.defined())
    torch::addmm_out(y2, b, x2, Wy.t());
  else
    torch::mm_out(y2, x2, Wy.t());
  if (merged && !ht_out) return y;
  auto ht = torch::mm(A, (xl.is_same(x) ? x2 : xl.reshape({-1, in})).t());  // (r, N)
  if (!merged) y2.addmm_(ht.t(), B.t(), /*beta=*/1, /*alpha=*/scale);
  if (ht_out) *ht_out = ht;
  return y;
}

/// y = x W^T + b + s (xl A^T) B^T as one autograd node, xl = x, or the dropped-out input `xd`
/// when one is given. Against base linear + add_lora it saves, per layer and step: the copy of
/// the base output that an out-of-place addmm makes; the second (N, in) input gradient that
/// the autograd engine would have to add to the first; three autograd nodes; and, when there
/// are more rows than in out / (in + out) (training batches, batched inference) and no
/// dropout, the two thin products that read and rewrite a whole (N, out) or (N, in) tensor:
/// forward and input gradient then use the merged weight W + s B A, rebuilt each time (2 out
/// r in flops), so the LoRA term costs almost nothing on top of the base product. It saves
/// for backward only what the gradients asked for need: x for dW (trainable base) or dA,
/// h^T = A xl^T (r, N) for dB, so a frozen base keeps nothing alive for a weight gradient it
/// never computes.
struct LoraLinearFunction : public torch::autograd::Function<LoraLinearFunction> {
  /// `xd` and `b` are optional (undefined tensors cannot be inputs of a C++ custom function).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const c10::optional<torch::Tensor>& xd_opt, const torch::Tensor& W,
                               const c10::optional<torch::Tensor>& b_opt, const torch::Tensor& A,
                               const torch::Tensor& B, double scale) {
    const torch::Tensor xd = xd_opt.value_or(torch::Tensor()), b = b_opt.value_or(torch::Tensor());
    const bool has_xd = xd.defined(), has_b = b.defined();
    const bool keep_x = W.requires_grad() || (A.requires_grad() && !has_xd);
    const bool keep_xd = has_xd && A.requires_grad();
    const bool keep_h = B.requires_grad();
    torch::Tensor ht;
    auto y = lora_linear_forward(x, has_xd ? xd : x, W, b, A, B, scale, keep_h ? &ht : nullptr);
    std::vector<torch::Tensor> saved = {W, A, B};
    if (keep_x) saved.push_back(x);
    if (keep_xd) saved.push_back(xd);
    if (keep_h) saved.push_back(ht);
    ctx->save_for_backward(saved);
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["flags"] = static_cast<int64_t>(keep_x | keep_xd << 1 | keep_h << 2 | has_xd << 3 | has_b << 4);
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto flags = ctx->saved_data["flags"].toInt();
    const bool keep_x = flags & 1, keep_xd = flags & 2, keep_h = flags & 4, has_xd = flags & 8, has_b = flags & 16;
    const double s = ctx->saved_data["scale"].toDouble();
    const auto x_sizes = ctx->saved_data["x_sizes"].toIntVector();
    const auto &W = saved[0], &A = saved[1], &B = saved[2];
    size_t next = 3;
    const torch::Tensor x = keep_x ? saved[next++] : torch::Tensor();
    const torch::Tensor xd = keep_xd ? saved[next++] : torch::Tensor();
    const torch::Tensor ht = keep_h ? saved[next++] : torch::Tensor();  // (r, N)
    const auto in = W.size(1), out = W.size(0);
    const auto g = grads[0].reshape({-1, out});  // (N, out)
    const bool merged = !has_xd && merge_pays(g.size(0), in, out);

    // needs_input_grad counts the tensor inputs only: an absent xd or b takes no index.
    size_t edge = 0;
    auto needs = [&](bool present) { return present && ctx->needs_input_grad(edge++); };
    const bool need_x = needs(true), need_xd = needs(has_xd), need_W = needs(true), need_b = needs(has_b),
               need_A = needs(true), need_B = needs(true);
    torch::Tensor dx, dxd, dW, db, dA, dB, gBt;
    if (need_A || need_xd || (need_x && !has_xd && !merged))
      gBt = torch::mm(B.t(), g.t()).mul_(s);  // (s g B)^T, (r, N)
    if (need_x) {
      if (merged) {
        dx = torch::mm(g, torch::addmm(W, B, A, /*beta=*/1, /*alpha=*/s));  // g (W + s B A), (N, in)
      } else {
        dx = torch::mm(g, W);                  // (N, in)
        if (!has_xd) dx.addmm_(gBt.t(), A);    // + s (g B) A, in place
      }
      dx = dx.view(x_sizes);
    }
    if (need_xd) dxd = torch::mm(gBt.t(), A).view(x_sizes);
    if (need_W) dW = torch::mm(g.t(), x.reshape({-1, in}));  // (out, in)
    if (need_b) db = g.sum(0);
    if (need_A) dA = torch::mm(gBt, (has_xd ? xd : x).reshape({-1, in}));  // (r, in)
    if (need_B) dB = torch::mm(ht, g).mul_(s).t().contiguous();            // (s h^T g)^T, (out, r)
    return {dx, dxd, dW, db, dA, dB, torch::Tensor()};
  }
};

}  // namespace lora::detail

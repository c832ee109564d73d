// The fused and optimised paths equal the unfused formulas within float rounding, forward and
// backward: functional::lora_linear (one autograd node for base + LoRA, used by lora::Linear)
// against lora_linear_reference. (The example models' attention core and dropout are tested
// beside the models, in tests/examples/test_models.cpp.) See docs/performance.md for what each
// path saves.
#include <lora/lora.hpp>

#include <functional>
#include <string>
#include <vector>

#include "support.hpp"
#include "reference.hpp"

namespace {

struct Case {
  torch::Tensor x, W, b, A, B;
  double scale = 2.0;
};

/// Leaves with requires_grad as asked: x (shape), W (out, in), b (out) or undefined, A, B.
Case make_case(std::vector<int64_t> x_shape, int64_t out, int64_t r, bool bias, torch::Dtype dt, bool grad_x = true,
               bool grad_W = true, bool grad_A = true, bool grad_B = true) {
  const auto in = x_shape.back();
  auto o = torch::TensorOptions().dtype(dt);
  Case c;
  c.x = torch::randn(x_shape, o).set_requires_grad(grad_x);
  c.W = torch::randn({out, in}, o).div_(std::sqrt(static_cast<double>(in))).set_requires_grad(grad_W);
  if (bias) c.b = torch::randn({out}, o).set_requires_grad(grad_W);
  c.A = torch::randn({r, in}, o).div_(std::sqrt(static_cast<double>(in))).set_requires_grad(grad_A);
  c.B = torch::randn({out, r}, o).set_requires_grad(grad_B);
  return c;
}

/// Gradients of sum(y * G) for a fixed random G, for each leaf that requires grad.
std::vector<torch::Tensor> grads_of(const torch::Tensor& y, const torch::Tensor& G, const std::vector<torch::Tensor>& leaves) {
  std::vector<torch::Tensor> want;
  for (const auto& t : leaves)
    if (t.defined() && t.requires_grad()) want.push_back(t);
  auto g = torch::autograd::grad({(y * G).sum()}, want, {}, /*retain_graph=*/false, /*create_graph=*/false,
                                 /*allow_unused=*/true);
  return g;
}

void check_case(const Case& c, double tol, const std::string& what) {
  auto y = lora::functional::lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale);
  auto ref = lora_test::lora_linear_reference(c.x, c.W, c.b, c.A, c.B, c.scale);
  REQUIRE(y.sizes() == ref.sizes());
  REQUIRE(lora_test::allclose(y, ref, tol, tol, what + " forward"));
  auto G = torch::randn_like(ref);
  const std::vector<torch::Tensor> leaves = {c.x, c.W, c.b, c.A, c.B};
  auto g1 = grads_of(y, G, leaves);
  auto g2 = grads_of(ref, G, leaves);
  REQUIRE(g1.size() == g2.size());
  const char* names[] = {"dx", "dW", "db", "dA", "dB"};
  size_t k = 0;
  for (size_t i = 0; i < leaves.size(); ++i) {
    if (!leaves[i].defined() || !leaves[i].requires_grad()) continue;
    REQUIRE(g1[k].defined());
    REQUIRE(lora_test::allclose(g1[k], g2[k], tol, tol, what + " " + names[i]));
    ++k;
  }
}

/// Whether anything besides the caller's handle refers to x's tensor or its memory.
bool kept_alive(const torch::Tensor& x) { return x.use_count() > 1 || x.storage().use_count() > 1; }

}  // namespace

TEST_CASE("fused lora_linear equals the unfused formula, forward and gradients (double)", "[fused]") {
  torch::manual_seed(11);
  for (bool bias : {true, false}) {
    check_case(make_case({10}, 6, 3, bias, torch::kDouble), 1e-10, "1-D");
    check_case(make_case({7, 10}, 6, 3, bias, torch::kDouble), 1e-10, "2-D");
    check_case(make_case({2, 5, 10}, 6, 4, bias, torch::kDouble), 1e-10, "3-D");
    check_case(make_case({2, 3, 4, 10}, 6, 4, bias, torch::kDouble), 1e-10, "4-D");
  }
}

TEST_CASE("fused lora_linear: the thin path and the merged-weight path both equal the formula", "[fused]") {
  torch::manual_seed(21);
  // 32 x 32: the merged weight pays from 16 rows on.
  REQUIRE_FALSE(lora::detail::merge_pays(15, 32, 32));
  REQUIRE(lora::detail::merge_pays(16, 32, 32));
  for (int64_t rows : {1, 3, 15, 16, 40, 200}) {
    check_case(make_case({rows, 32}, 32, 4, true, torch::kDouble), 1e-10, "rows " + std::to_string(rows));
    check_case(make_case({rows, 32}, 32, 4, false, torch::kDouble, true, false), 1e-10,
               "frozen base, rows " + std::to_string(rows));
  }
  // The same rows through a 3-D input, and in float.
  check_case(make_case({4, 50, 32}, 48, 8, true, torch::kFloat), 1e-4, "float, merged");
  check_case(make_case({1, 2, 32}, 48, 8, true, torch::kFloat), 1e-4, "float, thin");
}

TEST_CASE("fused lora_linear equals the unfused formula in float at DistilBERT-like sizes", "[fused]") {
  torch::manual_seed(12);
  check_case(make_case({4, 16, 96}, 64, 16, true, torch::kFloat), 1e-4, "float q_lin-like");
  check_case(make_case({4, 16, 64}, 256, 16, true, torch::kFloat), 1e-4, "float lin1-like");
  check_case(make_case({4, 16, 256}, 64, 16, true, torch::kFloat), 1e-4, "float lin2-like");
}

TEST_CASE("fused lora_linear: with frozen pieces the other gradients stay exact", "[fused]") {
  torch::manual_seed(13);
  // The LoRA setup: frozen base, trainable A and B, input requiring grad (from earlier layers).
  check_case(make_case({3, 4, 8}, 5, 2, true, torch::kDouble, true, false), 1e-10, "frozen base");
  // The first layer: the input needs no gradient.
  check_case(make_case({3, 4, 8}, 5, 2, true, torch::kDouble, false, false), 1e-10, "frozen base, no dx");
  // Only B trains (A frozen, as in LoRA-FA).
  check_case(make_case({3, 4, 8}, 5, 2, false, torch::kDouble, true, false, false, true), 1e-10, "only B");
  // Everything trains (freeze_base = false).
  check_case(make_case({3, 4, 8}, 5, 2, true, torch::kDouble, true, true, true, true), 1e-10, "all trainable");

  // The same through backward() into .grad, as a training loop reads them (check_case uses
  // autograd::grad): with the base frozen, dx, dA and dB equal the unfused formula's. (That the
  // frozen W and b get no .grad is autograd's doing for leaves that do not require grad, so it
  // is not asserted here; that nothing is kept for dW shows in the test below.)
  auto c = make_case({3, 8}, 5, 2, true, torch::kDouble, true, false);
  lora::functional::lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale).pow(2).sum().backward();
  auto x = c.x.detach().clone().requires_grad_(), A = c.A.detach().clone().requires_grad_(),
       B = c.B.detach().clone().requires_grad_();
  lora_test::lora_linear_reference(x, c.W, c.b, A, B, c.scale).pow(2).sum().backward();
  REQUIRE(c.x.grad().defined());
  REQUIRE(c.A.grad().defined());
  REQUIRE(c.B.grad().defined());
  CHECK(lora_test::allclose(c.x.grad(), x.grad(), 1e-10, 1e-10, "frozen base, backward(): dx"));
  CHECK(lora_test::allclose(c.A.grad(), A.grad(), 1e-10, 1e-10, "frozen base, backward(): dA"));
  CHECK(lora_test::allclose(c.B.grad(), B.grad(), 1e-10, 1e-10, "frozen base, backward(): dB"));
}

TEST_CASE("fused lora_linear keeps the input alive only for a gradient that needs it", "[fused]") {
  torch::manual_seed(14);
  auto x = (torch::randn({4, 6, 8}, torch::requires_grad()) * 2);  // a non-leaf activation
  auto W = torch::randn({5, 8}), b = torch::randn({5});
  auto A = torch::randn({2, 8}), B = torch::randn({5, 2});
  REQUIRE_FALSE(kept_alive(x));
  {
    // Base and adapter frozen: nothing needs x (only dx, which needs W, A, B).
    auto y = lora::functional::lora_linear(x, W, b, A, B, 1.0);
    REQUIRE(y.requires_grad());
    CHECK_FALSE(kept_alive(x));
  }
  {
    // Trainable A: dA = s (g B)^T x needs x.
    auto A2 = A.clone().requires_grad_();
    auto y = lora::functional::lora_linear(x, W, b, A2, B, 1.0);
    CHECK(kept_alive(x));
  }
  {
    // Only B trains: dB needs h = x A^T (N, r), not x.
    auto B2 = B.clone().requires_grad_();
    auto y = lora::functional::lora_linear(x, W, b, A, B2, 1.0);
    CHECK_FALSE(kept_alive(x));
  }
}

TEST_CASE("fused lora_linear with a dropout mask equals the formula on the dropped-out input", "[fused]") {
  torch::manual_seed(15);
  auto c = make_case({3, 5, 10}, 6, 3, true, torch::kDouble);
  auto mask = (torch::rand({3, 5, 10}) > 0.3).to(torch::kDouble);
  const double p = 0.3;
  auto y = lora::functional::lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale, p, true, mask);
  auto ref = lora_test::lora_linear_reference(c.x, c.W, c.b, c.A, c.B, c.scale, c.x * mask / (1 - p));
  REQUIRE(lora_test::allclose(y, ref, 1e-10, 1e-10, "masked forward"));
  auto G = torch::randn_like(ref);
  const std::vector<torch::Tensor> leaves = {c.x, c.W, c.b, c.A, c.B};
  auto g1 = grads_of(y, G, leaves);
  auto g2 = grads_of(ref, G, leaves);
  for (size_t i = 0; i < g1.size(); ++i) REQUIRE(lora_test::allclose(g1[i], g2[i], 1e-10, 1e-10, "masked grad"));
  // Random dropout in training mode: a fresh mask per call; in eval mode none.
  auto a = lora::functional::lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale, 0.5, true);
  auto b = lora::functional::lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale, 0.5, true);
  REQUIRE_FALSE(torch::allclose(a, b));
  auto e = lora::functional::lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale, 0.5, false);
  REQUIRE(lora_test::allclose(e, lora_test::lora_linear_reference(c.x, c.W, c.b, c.A, c.B, c.scale), 1e-10,
                              1e-10, "eval mode ignores p"));
}

TEST_CASE("fused lora_linear without autograd equals the formula", "[fused]") {
  torch::manual_seed(16);
  auto c = make_case({2, 7, 12}, 9, 4, true, torch::kFloat);
  torch::NoGradGuard no_grad;
  auto y = lora::functional::lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale);
  REQUIRE_FALSE(y.requires_grad());
  REQUIRE(lora_test::allclose(y, lora_test::lora_linear_reference(c.x, c.W, c.b, c.A, c.B, c.scale), 1e-5, 1e-5,
                              "no-grad forward"));
}

TEST_CASE("fused lora_linear accepts non-contiguous inputs and gradients", "[fused]") {
  torch::manual_seed(17);
  auto base = torch::randn({10, 2, 5}, torch::kDouble).requires_grad_();
  auto x = base.transpose(0, 2);  // (5, 2, 10), non-contiguous
  auto W = torch::randn({6, 10}, torch::kDouble), b = torch::randn({6}, torch::kDouble);
  auto A = torch::randn({3, 10}, torch::kDouble).requires_grad_(), B = torch::randn({6, 3}, torch::kDouble).requires_grad_();
  auto y = lora::functional::lora_linear(x, W, b, A, B, 0.5);
  auto ref = lora_test::lora_linear_reference(x, W, b, A, B, 0.5);
  REQUIRE(lora_test::allclose(y, ref, 1e-10, 1e-10, "non-contiguous x"));
  // A non-contiguous upstream gradient (through a transpose of the output).
  auto G = torch::randn({6, 2, 5}, torch::kDouble);
  auto g1 = torch::autograd::grad({(y.transpose(0, 2) * G).sum()}, {base, A, B});
  auto g2 = torch::autograd::grad({(ref.transpose(0, 2) * G).sum()}, {base, A, B});
  for (size_t i = 0; i < g1.size(); ++i) REQUIRE(lora_test::allclose(g1[i], g2[i], 1e-10, 1e-10, "non-contiguous grad"));
}

TEST_CASE("fused lora_linear supports several backward passes through one graph and accumulation", "[fused]") {
  torch::manual_seed(18);
  auto c = make_case({4, 8}, 5, 2, true, torch::kDouble, true, false);
  auto y = lora::functional::lora_linear(c.x, c.W, c.b, c.A, c.B, c.scale);
  y.sum().backward({}, /*retain_graph=*/true);
  auto first = c.A.grad().clone();
  y.sum().backward();
  REQUIRE(lora_test::allclose(c.A.grad(), 2 * first, 1e-12, 1e-12, "accumulated dA"));
}

TEST_CASE("lora::Linear with one, two and merged adapters equals the formula, forward and gradients", "[fused]") {
  torch::manual_seed(19);
  lora::Linear l(12, 10);
  l->to(torch::kDouble);
  lora::LayerAdapterSpec s;
  s.rank = 3, s.alpha = 6;  // s = alpha / r = 2
  auto& a = l->add_adapter("a", s);
  s.seed = 5, s.alpha = 1.5;  // s = 0.5
  auto& b = l->add_adapter("b", s);
  {
    torch::NoGradGuard g;
    a.B.normal_();
    b.B.normal_();
  }
  l->weight.set_requires_grad(false);
  l->bias.set_requires_grad(false);
  auto x = torch::randn({3, 4, 12}, torch::kDouble).requires_grad_();
  auto G = torch::randn({3, 4, 10}, torch::kDouble);

  l->set_active_adapters({"a"});
  auto ref1 = lora_test::lora_linear_reference(x, l->weight, l->bias, a.A, a.B, a.scale);
  auto y1 = l(x);
  REQUIRE(lora_test::allclose(y1, ref1, 1e-10, 1e-10, "one adapter"));
  auto g1 = torch::autograd::grad({(y1 * G).sum()}, {x, a.A, a.B});
  auto r1 = torch::autograd::grad({(ref1 * G).sum()}, {x, a.A, a.B});
  for (size_t i = 0; i < g1.size(); ++i) REQUIRE(lora_test::allclose(g1[i], r1[i], 1e-10, 1e-10, "one adapter grad"));

  l->set_active_adapters({"a", "b"});
  auto ref2 = lora_test::lora_linear_reference(x, l->weight, l->bias, a.A, a.B, a.scale) +
              b.scale * torch::matmul(torch::matmul(x, b.A.t()), b.B.t());
  auto y2 = l(x);
  REQUIRE(lora_test::allclose(y2, ref2, 1e-10, 1e-10, "two adapters"));
  auto g2 = torch::autograd::grad({(y2 * G).sum()}, {x, a.A, a.B, b.A, b.B});
  auto r2 = torch::autograd::grad({(ref2 * G).sum()}, {x, a.A, a.B, b.A, b.B});
  for (size_t i = 0; i < g2.size(); ++i) REQUIRE(lora_test::allclose(g2[i], r2[i], 1e-10, 1e-10, "two adapters grad"));

  l->merge("a");  // b stays unmerged: forward is the merged base plus b
  REQUIRE(lora_test::allclose(l(x), ref2.detach(), 1e-10, 1e-10, "a merged, b pending"));
  l->unmerge();
}

// lora::Linear: the LoRA formula, its gradients, merge/unmerge, enable/disable, device and dtype.
#include <lora/lora.hpp>

#include <map>
#include <type_traits>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"
#include "reference.hpp"

namespace {
lora::LayerAdapterSpec spec(int64_t r, double alpha, lora::Init init = lora::init::uniform_zero(), uint64_t seed = 7) {
  lora::LayerAdapterSpec s;
  s.rank = r;
  s.alpha = alpha;
  s.init = std::move(init);
  s.seed = seed;
  return s;
}
/// A layer with a random non-zero B, so the adapter changes the output.
lora::Linear adapted_layer(int64_t in, int64_t out, int64_t r, double alpha) {
  lora::Linear l(in, out);
  auto& a = l->add_adapter("default", spec(r, alpha));
  torch::NoGradGuard g;
  a.B.normal_(0, 0.5);
  return l;
}
}  // namespace

TEST_CASE("lora::Linear without adapters is exactly torch::nn::Linear", "[linear]") {
  torch::manual_seed(1);
  lora::Linear a(7, 5);
  torch::nn::Linear b(7, 5);
  {
    torch::NoGradGuard g;
    b->weight.copy_(a->weight);
    b->bias.copy_(a->bias);
  }
  auto x = torch::randn({3, 4, 7});
  REQUIRE(torch::equal(a(x), b(x)));
  REQUIRE(a->named_parameters().size() == 2);
  REQUIRE(a->named_parameters().contains("weight"));
  REQUIRE(a->named_parameters().contains("bias"));
  lora::Linear nobias(torch::nn::LinearOptions(7, 5).bias(false));
  REQUIRE_FALSE(nobias->bias.defined());
  REQUIRE(nobias(x).sizes() == torch::IntArrayRef({3, 4, 5}));
}

TEST_CASE("an adapter's scale comes from its spec's alpha, rank and scaling policy, in one place", "[linear][api]") {
  // The trap this closes: a spec with rank 16 and alpha 32 once gave s = 1 (an unset field).
  lora::Linear l(40, 24);
  lora::LayerAdapterSpec s;
  s.rank = 16, s.alpha = 32;
  CHECK(s.scale() == 2.0);
  CHECK(l->add_adapter("default", s).scale == 2.0);
  s.scaling = lora::scaling::alpha_over_sqrt_rank();
  CHECK(l->add_adapter("rs", s).scale == 8.0);
  s.scaling = lora::scaling::rank_proportional(10);
  CHECK(l->add_adapter("k", s).scale == 10.0);
  // inject() resolves it the same way, and reports what the layer holds.
  torch::nn::Sequential m(lora::Linear(8, 6));
  lora::Config c;
  c.rank = 4, c.alpha = 32;
  const auto handle = lora::inject(*m, c);
  CHECK(handle.layers()[0].scale == 8.0);
  CHECK(m[0]->as<lora::Linear>()->adapter("default").scale == 8.0);
  // A spec without a scaling function cannot resolve a scale: refused, nothing added.
  s.scaling = {};
  const auto msg = lora_test::error_of<lora::ConfigError>([&] { l->add_adapter("none", s); });
  CHECK(lora_test::contains(msg, "must be finite"));
  CHECK_FALSE(l->has_adapter("none"));
}

// Internals stay internal: only inject() / peft::load() make handles, only layers change an
// adapter's variant or merged flag (compile-time checks: they fail the build, not a run).
static_assert(!std::is_constructible_v<lora::ModelAdapter, std::string, std::vector<lora::detail::Layer>,
                                       std::vector<lora::LayerInfo>,
                                       std::vector<std::pair<std::string, torch::Tensor>>, int64_t, lora::Config>,
              "ModelAdapter's constructor must be private");
static_assert(std::is_default_constructible_v<lora::ModelAdapter>);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static_assert(std::is_same_v<lora::Adapters, lora::ModelAdapter> && std::is_same_v<lora::Adapter, lora::LayerAdapter> &&
                  std::is_same_v<lora::AdapterSpec, lora::LayerAdapterSpec>,
              "the old names stay as (deprecated) aliases for one release");
#pragma GCC diagnostic pop

TEST_CASE("B = 0 gives output identical to the base", "[linear]") {
  torch::manual_seed(2);
  lora::Linear l(16, 12);
  auto x = torch::randn({2, 5, 16});
  auto base = l(x).detach();
  l->add_adapter("default", spec(4, 8));
  REQUIRE(l->adapter("default").B.abs().sum().item<double>() == 0.0);
  REQUIRE(l->adapter("default").A.abs().sum().item<double>() > 0.0);
  REQUIRE(torch::equal(l(x), base));
  REQUIRE(l->named_parameters().contains("lora_A.default.weight"));
  REQUIRE(l->named_parameters().contains("lora_B.default.weight"));
}

TEST_CASE("the fused forward equals x W^T + b + s (x A^T) B^T", "[linear]") {
  torch::manual_seed(3);
  auto l = adapted_layer(16, 12, 4, 8);
  const auto& a = l->adapter("default");
  for (auto shape : {std::vector<int64_t>{16}, {3, 16}, {2, 5, 16}}) {
    auto x = torch::randn(shape);
    auto ref = lora_test::lora_linear_reference(x, l->weight, l->bias, a.A, a.B, a.scale);
    REQUIRE(lora_test::allclose(l(x), ref, 1e-5, 1e-5, "fused vs reference"));
  }
  auto ref = torch::matmul(torch::ones({1, 16}), (l->weight + a.scale * a.B.mm(a.A)).t()) + l->bias;
  REQUIRE(lora_test::allclose(l(torch::ones({1, 16})), ref, 1e-5, 1e-5, "vs effective weight"));
}

TEST_CASE("gradients of A and B equal the closed form", "[linear]") {
  torch::manual_seed(4);
  auto l = adapted_layer(10, 6, 3, 6);  // s = 2
  l->weight.set_requires_grad(true);    // to read dL/dW for the closed form
  const auto& a = l->adapter("default");
  auto x = torch::randn({8, 10});
  auto target = torch::randn({8, 6});
  (l(x) - target).pow(2).sum().backward();
  // dL/dW_eff, with W_eff = W + s B A, equals dL/dW (same position in the graph).
  auto G = l->weight.grad();
  REQUIRE(lora_test::allclose(a.A.grad(), a.scale * a.B.t().mm(G), 1e-4, 1e-5, "dL/dA vs s B^T G"));
  REQUIRE(lora_test::allclose(a.B.grad(), a.scale * G.mm(a.A.t()), 1e-4, 1e-5, "dL/dB vs s G A^T"));
}

TEST_CASE("a base frozen by inject: an optimizer over all the model parameters changes only A and B", "[linear]") {
  // As a user might: inject() (freeze_base, the default), then hand the optimizer every parameter
  // of the model, W and b included, and step. Only A and B may change.
  auto run = [](bool freeze_base) {
    torch::manual_seed(5);
    auto model = torch::nn::Sequential(lora::Linear(10, 8), torch::nn::ReLU(), lora::Linear(8, 6));
    lora::Config cfg;
    cfg.rank = 3;
    cfg.alpha = 6;
    cfg.adapt_output_head = true;
    cfg.freeze_base = freeze_base;
    auto adapters = lora::inject(*model, cfg);
    REQUIRE(adapters.layers().size() == 2);
    {
      torch::NoGradGuard g;
      for (auto& b : adapters.b_parameters()) b.normal_(0, 0.5);  // so that A gets a gradient too
    }
    std::vector<std::pair<std::string, torch::Tensor>> before;
    for (const auto& p : model->named_parameters()) before.emplace_back(p.key(), p.value().detach().clone());
    torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2));  // all of them
    opt.zero_grad();
    model->forward(torch::randn({4, 10})).pow(2).sum().backward();
    opt.step();
    std::map<std::string, bool> changed;
    for (const auto& [name, value] : before) changed[name] = !torch::equal(model->named_parameters()[name], value);
    return changed;
  };
  SECTION("freeze_base: W and b bit-identical, every A and B changed") {
    const auto changed = run(true);
    REQUIRE(changed.size() == 8);  // 2 layers x (weight, bias, A, B)
    for (const auto& [name, moved] : changed) {
      INFO(name);
      CHECK(moved == (name.find(".lora_") != std::string::npos));
    }
  }
  SECTION("control: without freeze_base the same step moves W and b too") {
    for (const auto& [name, moved] : run(false)) {
      INFO(name);
      CHECK(moved);
    }
  }
}

TEST_CASE("merge and unmerge", "[linear][merge]") {
  torch::manual_seed(6);
  auto l = adapted_layer(32, 24, 4, 16);
  auto W0 = l->weight.clone();
  auto x = torch::randn({5, 32});
  auto unmerged = l(x).detach();
  l->merge();
  REQUIRE(l->adapter("default").merged());
  auto merged = l(x).detach();
  REQUIRE(lora_test::allclose(merged, unmerged, 1e-5, 1e-6, "merged vs unmerged"));
  REQUIRE_FALSE(torch::equal(l->weight, W0));
  l->merge();  // idempotent
  REQUIRE(lora_test::allclose(l(x), unmerged, 1e-5, 1e-6, "merged twice"));
  l->unmerge();
  REQUIRE(lora_test::allclose(l->weight, W0, 1e-5, 1e-6, "unmerged weight vs original"));
  REQUIRE(lora_test::allclose(l(x), unmerged, 1e-5, 1e-6, "unmerged output"));
}

TEST_CASE("disable gives exactly the base output, enable restores the adapter", "[linear]") {
  torch::manual_seed(7);
  lora::Linear l(8, 8);
  auto x = torch::randn({3, 8});
  auto base = l(x).detach();
  auto& a = l->add_adapter("default", spec(2, 4));
  {
    torch::NoGradGuard g;
    a.B.normal_();
  }
  auto adapted = l(x).detach();
  REQUIRE_FALSE(torch::allclose(adapted, base));
  l->set_adapters_enabled(false);
  REQUIRE(torch::equal(l(x), base));
  l->set_adapters_enabled(true);
  REQUIRE(torch::equal(l(x), adapted));
  // A merged adapter is taken out again when disabled.
  l->merge();
  l->set_adapters_enabled(false);
  REQUIRE(lora_test::allclose(l(x), base, 1e-5, 1e-6, "disabled after merge"));
}

TEST_CASE("dropout on the LoRA branch: identity in eval, x*mask/(1-p) in training", "[linear][dropout]") {
  torch::manual_seed(8);
  lora::Linear l(64, 16);
  auto s = spec(4, 4);
  s.dropout = 0.5;
  auto& a = l->add_adapter("default", s);
  {
    torch::NoGradGuard g;
    a.B.normal_();
  }
  auto x = torch::randn({32, 64});
  l->eval();
  auto ref = lora_test::lora_linear_reference(x, l->weight, l->bias, a.A, a.B, a.scale);
  REQUIRE(lora_test::allclose(l(x), ref, 1e-5, 1e-5, "eval ignores dropout"));
  l->train();
  auto y1 = l(x), y2 = l(x);
  REQUIRE_FALSE(torch::allclose(y1, y2));  // a fresh mask each call
  auto mask = (torch::rand({32, 64}) > 0.5).to(torch::kFloat);
  auto with_mask = lora::functional::add_lora(torch::nn::functional::linear(x, l->weight, l->bias), x, a.A, a.B,
                                              a.scale, 0.5, true, mask);
  auto ref_mask = lora_test::lora_linear_reference(x, l->weight, l->bias, a.A, a.B, a.scale, x * mask / 0.5);
  REQUIRE(lora_test::allclose(with_mask, ref_mask, 1e-5, 1e-5, "given mask"));
}

TEST_CASE("adapters follow the base layer's dtype and model->to()", "[linear][device]") {
  torch::manual_seed(9);
  lora::Linear l(8, 4);
  l->to(torch::kDouble);
  auto& a = l->add_adapter("default", spec(2, 2));
  REQUIRE(a.A.dtype() == torch::kDouble);
  REQUIRE(a.B.dtype() == torch::kDouble);
  l->to(torch::kFloat);
  REQUIRE(l->adapter("default").A.dtype() == torch::kFloat);
  REQUIRE(l(torch::randn({2, 8})).dtype() == torch::kFloat);
  if (torch::cuda::is_available()) {
    l->to(torch::kCUDA);
    REQUIRE(l->adapter("default").A.is_cuda());
    REQUIRE(l(torch::randn({2, 8}, torch::kCUDA)).is_cuda());
  } else {
    WARN("no CUDA device: the CUDA part of this test did not run");
  }
}

TEST_CASE("several named adapters on one layer", "[linear][multi]") {
  torch::manual_seed(10);
  lora::Linear l(12, 10);
  auto x = torch::randn({4, 12});
  auto base = l(x).detach();
  auto& a = l->add_adapter("a", spec(2, 2, lora::init::uniform_zero(), 1));
  auto& b = l->add_adapter("b", spec(3, 3, lora::init::uniform_zero(), 2));
  {
    torch::NoGradGuard g;
    a.B.normal_();
    b.B.normal_();
  }
  auto da = torch::matmul(x, a.delta_weight().t()), db = torch::matmul(x, b.delta_weight().t());
  REQUIRE(lora_test::allclose(l(x), base + da + db, 1e-5, 1e-5, "both active"));
  l->set_active_adapters({"a"});
  REQUIRE(lora_test::allclose(l(x), base + da, 1e-5, 1e-5, "only a"));
  l->set_active_adapters({"b"});
  REQUIRE(lora_test::allclose(l(x), base + db, 1e-5, 1e-5, "only b"));
  l->remove_adapter("b");
  REQUIRE_FALSE(l->named_parameters().contains("lora_B.b.weight"));
  REQUIRE(l->active_adapters().empty());
  REQUIRE(torch::equal(l(x), base));
  REQUIRE_THROWS_AS(l->set_active_adapters({"nope"}), lora::ConfigError);
  REQUIRE_THROWS_AS(l->add_adapter("a", spec(2, 2)), lora::ConfigError);
  REQUIRE_THROWS_AS(l->add_adapter("x.y", spec(2, 2)), lora::ConfigError);
}

// Init and scaling policies: statistics, determinism, base-preserving inits.
#include <lora/lora.hpp>

#include <cmath>

#include "support.hpp"

namespace {
lora::LayerAdapterSpec spec(int64_t r, double scale, lora::Init init, uint64_t seed = 11) {
  lora::LayerAdapterSpec s;
  s.rank = r;
  s.alpha = scale * r;  // alpha / r = scale
  s.init = std::move(init);
  s.seed = seed;
  return s;
}
}  // namespace

TEST_CASE("scaling policies", "[policy][scaling]") {
  CHECK(lora::scaling::alpha_over_rank().scale(32, 16) == Approx(2.0));
  CHECK(lora::scaling::alpha_over_rank().scale(32, 128) == Approx(0.25));
  CHECK(lora::scaling::constant_alpha().scale(32, 16) == Approx(32.0));
  CHECK(lora::scaling::constant_alpha().scale(32, 128) == Approx(32.0));
  CHECK(lora::scaling::alpha_over_sqrt_rank().scale(32, 16) == Approx(8.0));
  CHECK(lora::scaling::alpha_over_sqrt_rank().is_rslora);
  CHECK(lora::scaling::rank_proportional(10).scale(32, 16) == Approx(10.0));
  CHECK(lora::scaling::rank_proportional(10).scale(32, 128) == Approx(10.0));
  CHECK(lora::scaling::custom("half", [](double a, int64_t r) { return a / (2.0 * r); }).scale(8, 2) == Approx(2.0));
}

TEST_CASE("uniform-zero: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0", "[policy][init]") {
  lora::Linear l(400, 300);
  const auto& a = l->add_adapter("default", spec(64, 1, lora::init::uniform_zero()));
  const double bound = 1.0 / std::sqrt(400.0);
  CHECK(a.A.abs().max().item<double>() <= bound);
  CHECK(a.A.abs().max().item<double>() > 0.95 * bound);
  CHECK(std::abs(a.A.mean().item<double>()) < 0.02 * bound);
  CHECK(a.A.std().item<double>() == Approx(bound / std::sqrt(3.0)).epsilon(0.02));  // std of U(-b, b)
  CHECK(a.B.abs().max().item<double>() == 0.0);
}

TEST_CASE("gaussian-zero: A ~ N(0, 1/r^2), B = 0", "[policy][init]") {
  lora::Linear l(400, 300);
  const auto& a = l->add_adapter("default", spec(16, 1, lora::init::gaussian_zero()));
  CHECK(std::abs(a.A.mean().item<double>()) < 0.005);
  CHECK(a.A.std().item<double>() == Approx(1.0 / 16).epsilon(0.03));
  CHECK(a.B.abs().max().item<double>() == 0.0);
}

TEST_CASE("gaussian-gaussian: A, B ~ N(0, sigma^2)", "[policy][init]") {
  lora::Linear l(400, 300);
  const auto& a = l->add_adapter("default", spec(32, 1, lora::init::gaussian_gaussian()));
  CHECK(a.A.std().item<double>() == Approx(1.0).epsilon(0.03));
  CHECK(a.B.std().item<double>() == Approx(1.0).epsilon(0.03));
  CHECK(std::abs(a.B.mean().item<double>()) < 0.05);
  lora::Linear m(400, 300);
  const auto& b = m->add_adapter("default", spec(32, 1, lora::init::gaussian_gaussian(0.02)));
  CHECK(b.A.std().item<double>() == Approx(0.02).epsilon(0.03));
  REQUIRE_THROWS_AS(lora::init::gaussian_gaussian(-1), lora::ConfigError);
}

TEST_CASE("the same seed gives the same adapter, another seed another", "[policy][init]") {
  for (const auto& init : {lora::init::uniform_zero(), lora::init::gaussian_zero(), lora::init::gaussian_gaussian()}) {
    INFO(init.name);
    lora::Linear l1(20, 10), l2(20, 10), l3(20, 10);
    const auto& a1 = l1->add_adapter("default", spec(4, 1, init, 123));
    const auto& a2 = l2->add_adapter("default", spec(4, 1, init, 123));
    const auto& a3 = l3->add_adapter("default", spec(4, 1, init, 124));
    CHECK(torch::equal(a1.A, a2.A));
    CHECK(torch::equal(a1.B, a2.B));
    CHECK_FALSE(torch::equal(a1.A, a3.A));
  }
}

TEST_CASE("PiSSA and OLoRA keep the effective weight at step 0", "[policy][init]") {
  for (const auto& init : {lora::init::pissa(), lora::init::olora()}) {
    INFO(init.name);
    torch::manual_seed(12);
    lora::Linear l(48, 32);
    auto W = l->weight.detach().clone();
    auto x = torch::randn({6, 48});
    auto y = l(x).detach();
    const auto& a = l->add_adapter("default", spec(8, 2.0, init));
    auto effective = l->weight + a.delta_weight();
    REQUIRE(lora_test::allclose(effective, W, 1e-4, 1e-5, init.name + ": W' + s B A vs W"));
    REQUIRE(lora_test::allclose(l(x), y, 1e-4, 1e-5, init.name + ": output"));
    REQUIRE_FALSE(torch::allclose(l->weight, W));  // the base did change
    CHECK(a.B.abs().sum().item<double>() > 0);
  }
}

TEST_CASE("PiSSA holds the principal directions, OLoRA's B is orthonormal", "[policy][init]") {
  torch::manual_seed(13);
  lora::Linear l(40, 30);
  auto W = l->weight.detach().clone().to(torch::kDouble);
  const auto& p = l->add_adapter("default", spec(5, 1.0, lora::init::pissa()));
  // s B A is the best rank-5 approximation of W: its norm is the top-5 singular values'.
  auto S = std::get<1>(torch::linalg_svd(W, false));
  CHECK(p.delta_weight().to(torch::kDouble).norm().item<double>() ==
        Approx(S.narrow(0, 0, 5).pow(2).sum().sqrt().item<double>()).epsilon(1e-4));
  lora::Linear m(40, 30);
  const auto& o = m->add_adapter("default", spec(5, 1.0, lora::init::olora()));
  REQUIRE(lora_test::allclose(o.B.t().mm(o.B), torch::eye(5), 1e-4, 1e-5, "B^T B vs I"));
}

TEST_CASE("a custom init policy", "[policy][init]") {
  auto ones = lora::init::custom("ones", [](lora::InitContext& c) {
    c.A.fill_(1);
    c.B.fill_(0);
  });
  lora::Linear l(6, 4);
  const auto& a = l->add_adapter("default", spec(2, 1, ones));
  CHECK(a.A.sum().item<double>() == 12);
  auto bad = lora::init::custom("bad", [](lora::InitContext& c) { c.A = torch::zeros({1, 1}); });
  lora::Linear m(6, 4);
  REQUIRE_THROWS_AS(m->add_adapter("default", spec(2, 1, bad)), lora::ConfigError);
}

TEST_CASE("policies by name: every name round-trips, an unknown one lists the names", "[policies][by_name]") {
  REQUIRE(lora::scaling::names().size() >= 3);  // so that the loops below check something
  REQUIRE(lora::init::names().size() >= 5);
  for (const auto& n : lora::scaling::names()) CHECK(lora::scaling::by_name(n).name == n);
  for (const auto& n : lora::init::names()) CHECK(lora::init::by_name(n).name.rfind(n, 0) == 0);
  CHECK(lora::init::by_name("gaussian-gaussian", 0.5).name == lora::init::gaussian_gaussian(0.5).name);
  using lora_test::contains;
  using lora_test::error_of;
  const auto s = error_of<lora::ConfigError>([] { lora::scaling::by_name("alpha_over_rank"); });
  CHECK(contains(s, "'alpha_over_rank'"));
  CHECK(contains(s, "'alpha-over-rank'"));
  const auto i = error_of<lora::ConfigError>([] { lora::init::by_name("kaiming"); });
  CHECK(contains(i, "'kaiming'"));
  CHECK(contains(i, "'pissa'"));
}

TEST_CASE("gaussian-subtracted: gaussian A and B, and W - s B A, so the layer starts at the base", "[policy][init]") {
  torch::manual_seed(3);
  const auto x = torch::randn({5, 40});
  for (const bool plain : {false, true}) {
    INFO((plain ? "torch::nn::Linear" : "lora::Linear"));
    torch::nn::Sequential net(torch::nn::Linear(40, 3));
    if (!plain) net = torch::nn::Sequential(lora::Linear(40, 3));
    const auto before = net->forward(x).detach().clone();
    lora::Config c;
    c.rank = 16;  // above min(in, out) = 3: allowed, since the init decomposes nothing
    c.alpha = 32;
    c.init = lora::init::gaussian_subtracted(1.0);
    c.targets = {"all-linear"};
    c.adapt_output_head = true;
    c.allow_rank_above_min = true;
    auto adapters = lora::inject(*net, c);
    const auto after = net->forward(x);
    const double diff = (after - before).abs().max().item<double>();
    std::cout << "gaussian-subtracted (" << (plain ? "plain" : "lora::Linear") << "): max |y - y_base| = " << diff << "\n";
    CHECK(diff < 1e-3);  // W0 - s B A + s B A in float32, with s B A entries ~ 8
    CHECK(adapters.a_parameters().at(0).std().item<double>() == Approx(1.0).epsilon(0.15));
    CHECK(adapters.b_parameters().at(0).abs().max().item<double>() > 0.1);
  }
  CHECK(lora::init::by_name("gaussian-subtracted", 0.1).name == "gaussian-subtracted(0.100000)");
  REQUIRE_THROWS_AS(lora::init::gaussian_subtracted(0), lora::ConfigError);
}

// The study's second-round machinery (examples/common/sweep/): the optimum fitted without
// collapsed runs, the stability edge, the slope against the scale, the collapse rule, the
// --alphas / --alpha-lrs grid, --full-train and the plot axes. Each estimator is checked on
// numbers whose answer is known in closed form.
#include "sweep/cli.hpp"
#include "sweep/run.hpp"
#include "sweep/plot.hpp"
#include "sweep/robust.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using lora_test::contains;
using lora_test::error_of;

/// Runs of a quadratic in log10(LR) with its vertex at `peak_lr` (value `peak` there).
std::vector<sweep::RunValue> parabola_runs(const std::vector<double>& lrs, double peak_lr, double peak, uint64_t seed) {
  std::vector<sweep::RunValue> out;
  for (const double lr : lrs) {
    const double d = std::log10(lr) - std::log10(peak_lr);
    out.push_back({lr, peak - 40 * d * d, seed, false});
  }
  return out;
}

sweep::Options parse(std::vector<std::string> args) {
  sweep::ProgramSpec spec;
  spec.name = "test_sweep";
  return sweep::parse_options(args, spec);
}

}  // namespace

TEST_CASE("estimators: the least-squares optimum recovers a known vertex and ignores collapsed runs", "[sweep][robust]") {
  const std::vector<double> lrs = {1e-3, 1.2e-3, 1.5e-3, 1.8e-3, 2.2e-3, 2.7e-3, 3.3e-3};
  auto runs = parabola_runs(lrs, 1.9e-3, 60, 1);
  // A collapsed cliff next to it (chance values that a fit through them would drag down), and a
  // far point outside half a decade: both must be left out.
  runs.push_back({3.9e-3, 25, 1, true});
  runs.push_back({4.7e-3, 25, 1, true});
  runs.push_back({1e-4, -1000, 1, false});
  const auto f = sweep::fit_optimum(runs, /*higher_is_better=*/true, /*log_values=*/false);
  REQUIRE(f.found);
  REQUIRE(f.interpolated);
  const double diff = std::abs(std::log10(f.lr) - std::log10(1.9e-3));
  std::cout << "fit_optimum: vertex " << f.lr << " vs 0.0019 (max diff in log10 LR " << diff << ")\n";
  CHECK(diff < 1e-9);
  CHECK(f.value == Approx(60).epsilon(1e-9));
  CHECK(f.runs == 7);
  CHECK(f.lrs == 7);
  CHECK(f.best_lr == 1.8e-3);

  // Perplexity-like: log10 of the value is the quadratic; lower is better.
  std::vector<sweep::RunValue> ppl;
  for (const double lr : lrs) {
    const double d = std::log10(lr) - std::log10(1.4e-3);
    ppl.push_back({lr, std::pow(10.0, 2.5 + 3 * d * d), 2, false});
  }
  const auto g = sweep::fit_optimum(ppl, /*higher_is_better=*/false, /*log_values=*/true);
  REQUIRE(g.interpolated);
  CHECK(std::abs(std::log10(g.lr) - std::log10(1.4e-3)) < 1e-9);
  CHECK(g.value == Approx(std::pow(10.0, 2.5)).epsilon(1e-9));
}

TEST_CASE("estimators: an optimum at the cliff or with too few points is not interpolated, and says why", "[sweep][robust]") {
  // Rising up to the last LR that did not collapse: the vertex lies beyond the fitted LRs.
  std::vector<sweep::RunValue> rising = {{1e-3, 50, 1, false}, {2e-3, 56, 1, false}, {3e-3, 58, 1, false},
                                         {6e-3, 25, 1, true}};
  const auto f = sweep::fit_optimum(rising, true, false);
  REQUIRE(f.found);
  CHECK_FALSE(f.interpolated);
  CHECK(f.lr == 3e-3);
  CHECK(contains(f.note, "outside the fitted LRs"));
  // Two LRs within half a decade: no fit.
  const auto two = sweep::fit_optimum({{1e-3, 50, 1, false}, {2e-3, 55, 1, false}, {1e-1, 20, 1, false}}, true, false);
  CHECK_FALSE(two.interpolated);
  CHECK(contains(two.note, "2 LR(s)"));
  // Every run collapsed: no optimum at all.
  const auto none = sweep::fit_optimum({{1e-3, 25, 1, true}, {2e-3, 25, 1, true}}, true, false);
  CHECK_FALSE(none.found);
  CHECK(contains(none.note, "every run collapsed"));
}

TEST_CASE("estimators: the stability edge is the last LR before the first collapse above the best", "[sweep][robust]") {
  // A collapse below the best does not count; one above it does, even if a later LR recovers.
  const std::vector<sweep::RunValue> runs = {{5e-4, 25, 1, true},  {1e-3, 55, 1, false}, {2e-3, 60, 1, false},
                                             {3e-3, 57, 1, false}, {6e-3, 25, 1, true},  {1e-2, 40, 1, false}};
  const auto e = sweep::stability_edge(runs, 2e-3);
  REQUIRE(e.found);
  CHECK(e.lr == 3e-3);
  CHECK(e.collapsed_lr == 6e-3);
  const auto none = sweep::stability_edge({{1e-3, 55, 1, false}, {2e-3, 60, 1, false}}, 2e-3);
  CHECK_FALSE(none.found);
  CHECK(contains(none.note, "no collapse up to LR 0.002"));
}

TEST_CASE("estimators: the slope against the scale and its interval match the hand computation", "[sweep][robust]") {
  // x = 0..3, y = 1, 3, 2, 5: slope 5.5 / 5 = 1.1, intercept 1.1, SSE 2.7,
  // se = sqrt(2.7 / 2 / 5), half-width t(0.975, 2) = 4.303 times se.
  const auto s = sweep::fit_line({0, 1, 2, 3}, {1, 3, 2, 5});
  REQUIRE(s);
  CHECK(s->slope == Approx(1.1).epsilon(1e-12));
  CHECK(s->intercept == Approx(1.1).epsilon(1e-12));
  const double half = 4.303 * std::sqrt(2.7 / 2 / 5);
  CHECK(s->lo == Approx(1.1 - half).epsilon(1e-12));
  CHECK(s->hi == Approx(1.1 + half).epsilon(1e-12));
  CHECK_FALSE(sweep::fit_line({1, 1, 1}, {1, 2, 3}));  // one x: no slope
  CHECK_FALSE(sweep::fit_line({1, 2}, {1, 2}));        // two points: no interval
}

TEST_CASE("estimators: the collapse rule", "[sweep][robust]") {
  const sweep::CollapseRule chance{30, true, "test_acc <= 30"};
  CHECK(chance.collapsed(25.0, false));
  CHECK(chance.collapsed(30.0, false));
  CHECK_FALSE(chance.collapsed(30.5, false));
  CHECK(chance.collapsed(80.0, /*diverged=*/true));
  CHECK(chance.collapsed(std::nullopt, false));
  const sweep::CollapseRule base_ppl{900, false, "test_ppl >= 900"};
  CHECK(base_ppl.collapsed(950.0, false));
  CHECK_FALSE(base_ppl.collapsed(400.0, false));
  const sweep::CollapseRule none{};
  CHECK_FALSE(none.collapsed(1.0, false));
  CHECK(none.collapsed(1.0, true));
}

TEST_CASE("estimators: --alphas makes one column per alpha, --alpha-lrs gives each its own LRs", "[sweep][robust]") {
  const auto o = parse({"--ranks", "16", "--alphas", "8", "32", "--lrs", "1e-3", "2e-3", "--alpha-lrs", "8:1e-2,2e-2,3e-2",
                        "--seeds", "1"});
  const auto grid = sweep::build_grid(o);
  std::vector<std::string> keys;
  for (const auto& p : grid) keys.push_back(sweep::key(p));
  CHECK(keys == std::vector<std::string>{"lora_r16_a8_lr1e-02_s1", "lora_r16_a8_lr2e-02_s1", "lora_r16_a8_lr3e-02_s1",
                                         "lora_r16_a32_lr1e-03_s1", "lora_r16_a32_lr2e-03_s1"});
  CHECK(grid.front().alpha == 8);
  CHECK(grid.back().alpha == 32);
  CHECK(sweep::column_label("lora_r16_a8") == "r16 a8");
  CHECK(sweep::column_label("lora_r16") == "r16");
  CHECK(sweep::column_label("full") == "FullFT");
  // One alpha: the columns and keys of a plain --alpha sweep, so finished points stay valid.
  const auto one = sweep::build_grid(parse({"--ranks", "16", "--alphas", "32", "--lrs", "1e-3", "--seeds", "1"}));
  CHECK(sweep::key(one.front()) == "lora_r16_lr1e-03_s1");
  // Errors name the flag and what is allowed.
  CHECK(contains(error_of<examples::UsageError>([] { parse({"--alphas", "8", "32", "--alpha-lrs", "16:1e-3"}); }), "not one of --alphas"));
  CHECK(contains(error_of<examples::UsageError>([] { parse({"--alphas", "8", "--alpha-lrs", "8-1e-3"}); }), "has no ':'"));
  CHECK(contains(error_of<examples::UsageError>([] { parse({"--alphas", "8", "--alpha-lrs", "8:1e-3,x"}); }), "'x' is not a number"));
  CHECK(contains(error_of<examples::UsageError>([] { parse({"--alpha", "8", "--alphas", "8", "16"}); }), "excludes"));
  CHECK(contains(error_of<examples::UsageError>([] { parse({"--full-train", "half"}); }), "--full-train: 'half' is not allowed"));
  // A preset built on a shared block: a flag the preset sets replaces the block's.
  const auto merged = sweep::with_flags({{"--seeds", {"1", "2", "3"}}, {"--epochs", {"2"}}}, {{"--seeds", {"1", "2"}}});
  CHECK(merged == sweep::FlagValues{{"--epochs", {"2"}}, {"--seeds", {"1", "2"}}});
}

TEST_CASE("estimators: --full-train freezes the embeddings, or everything outside the Linear layers", "[sweep][robust]") {
  struct NetImpl : torch::nn::Module {
    NetImpl() {
      emb = register_module("emb", torch::nn::Embedding(10, 4));
      norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({4})));
      fc = register_module("fc", torch::nn::Linear(4, 4));
      head = register_module("head", lora::Linear(4, 2));
    }
    torch::nn::Embedding emb{nullptr};
    torch::nn::LayerNorm norm{nullptr};
    torch::nn::Linear fc{nullptr};
    lora::Linear head{nullptr};
  };
  const auto trainable = [](const torch::nn::Module& m) {
    std::vector<std::string> names;
    for (const auto& p : m.named_parameters())
      if (p.value().requires_grad()) names.push_back(p.key());
    return names;
  };
  NetImpl all, no_emb, linear;
  sweep::detail::restrict_full_training(all, "all");
  sweep::detail::restrict_full_training(no_emb, "no-embeddings");
  sweep::detail::restrict_full_training(linear, "linear");
  CHECK(trainable(all) == std::vector<std::string>{"emb.weight", "norm.weight", "norm.bias", "fc.weight", "fc.bias",
                                                   "head.weight", "head.bias"});
  CHECK(trainable(no_emb) ==
        std::vector<std::string>{"norm.weight", "norm.bias", "fc.weight", "fc.bias", "head.weight", "head.bias"});
  CHECK(trainable(linear) == std::vector<std::string>{"fc.weight", "fc.bias", "head.weight", "head.bias"});
}

TEST_CASE("estimators: y ticks print no -0, and a log axis ticks 1-2-5 times powers of ten", "[sweep][robust]") {
  for (const double t : sweep::y_ticks(-0.3, 1.2, false)) CHECK(sweep::detail::num(t, "%g") != "-0");
  const auto ticks = sweep::y_ticks(std::log10(250), std::log10(6000), true);
  std::vector<std::string> shown;
  for (const double t : ticks) shown.push_back(sweep::detail::num(std::pow(10.0, t), "%g"));
  CHECK(shown == std::vector<std::string>{"500", "1000", "2000", "5000"});
  // A log-axis plot of perplexities labels the axis and draws hollow markers for collapsed runs.
  sweep::Curve c;
  c.column = "lora_r4";
  c.label = "r4";
  c.cells = {{1e-3, {400, 420}, 2, 0, 0}, {3e-3, {350, 360}, 2, 0, 0}, {1e-2, {5000, 5200}, 2, 0, 2}};
  const auto o = sweep::find_optimum(c, false);
  const auto svg = sweep::plot_svg({c}, {o}, "test perplexity", "log axis", /*log_y=*/true);
  CHECK(contains(svg, "test perplexity (log scale)"));
  CHECK(contains(svg, "2/2 runs collapsed"));
  CHECK(contains(svg, ">1000</text>"));
}

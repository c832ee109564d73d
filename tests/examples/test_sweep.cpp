// The sweep engine (examples/common/sweep/) end to end, on a toy task: a two-layer MLP of
// lora::Linear layers classifying synthetic points, a few steps per point.
#include "sweep/cli.hpp"
#include "sweep/run.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using lora_test::contains;
using lora_test::error_of;
using lora_test::temp_dir;

namespace fs = std::filesystem;
using nlohmann::json;

/// Removes a test folder, unless LORA_SWEEP_KEEP is set (to look at the outputs).
void cleanup(const fs::path& dir) {
  if (!std::getenv("LORA_SWEEP_KEEP")) fs::remove_all(dir);
}

/// The toy model: (B, 8) -> tanh(fc1) (B, 16) -> fc2 (B, 4) logits.
struct ToyNetImpl : torch::nn::Module {
  ToyNetImpl() {
    fc1 = register_module("fc1", lora::Linear(8, 16));
    fc2 = register_module("fc2", lora::Linear(16, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(torch::tanh(fc1(x))); }
  lora::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ToyNet);

/// Synthetic data: x ~ N(0, 1) in 8 dims, label = argmax of a fixed linear teacher.
struct ToyData {
  torch::Tensor x, y;  // (N, 8), (N)
};
ToyData toy_data(int64_t n, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto teacher = at::detail::createCPUGenerator(7);
  const auto w = torch::randn({8, 4}, teacher);  // (8, 4)
  const auto x = torch::randn({n, 8}, gen);
  return {x, x.mm(w).argmax(1)};
}

/// Batches of `batch` rows of `d`, in the order `order` (N) gives.
std::vector<sweep::Batch> batches_of(const ToyData& d, const torch::Tensor& order, int64_t batch) {
  std::vector<sweep::Batch> out;
  for (int64_t i = 0; i < order.size(0); i += batch) {
    const auto idx = order.narrow(0, i, std::min(batch, order.size(0) - i));
    out.push_back({{"x", d.x.index_select(0, idx)}, {"y", d.y.index_select(0, idx)}});
  }
  return out;
}

/// The toy task. Counts the models it makes; can throw in the middle of its `crash_at`-th run
/// (1-based) to simulate a process killed mid-point.
class ToyTask : public sweep::Task {
 public:
  explicit ToyTask(const sweep::Options& o, int crash_at = -1) : o_(o), crash_at_(crash_at) {}

  std::string name() const override { return "toy"; }
  std::string model_name() const override { return "toy-mlp-8-16-4"; }
  sweep::Metric metric() const override { return {"test_acc", "test accuracy (%)", true}; }
  int64_t steps_per_epoch() const override { return (o_.train_size + o_.batch_size - 1) / o_.batch_size; }
  double steps_per_second(const sweep::Point&) const override { return 100; }
  void prepare() override {
    train_ = toy_data(o_.train_size, 1);
    val_ = toy_data(o_.val_size, 2);
    test_ = toy_data(64, 3);
  }

  sweep::Model make_model(const sweep::Point&) override {
    const int run = ++runs;
    ToyNet net;
    {  // the "pretrained" base: the same for every point
      torch::NoGradGuard no_grad;
      auto gen = at::detail::createCPUGenerator(1234);
      for (auto& p : net->parameters()) p.copy_(torch::randn(p.sizes(), gen) * 0.5);
    }
    const auto impl = net.ptr();  // shared_ptr<ToyNetImpl>: the closures own the model
    auto steps = std::make_shared<int>(0);
    sweep::Model m;
    m.module = impl;
    m.loss = [this, impl, run, steps](const sweep::Batch& b) {
      if (run == crash_at_ && ++*steps == 3) throw std::runtime_error("simulated crash in the middle of a point");
      return torch::nn::functional::cross_entropy(impl->forward(b.at("x")), b.at("y"));  // ()
    };
    m.row_losses = [impl](const sweep::Batch& b) {
      namespace F = torch::nn::functional;
      const auto nll = F::cross_entropy(impl->forward(b.at("x")), b.at("y"), F::CrossEntropyFuncOptions().reduction(torch::kNone));
      return std::make_pair(nll, torch::ones_like(nll));  // (B), (B)
    };
    const auto device = torch::Device(o_.device);
    m.val_loss = [this, impl, device] {
      const auto batches = batches_of(val_, torch::arange(val_.x.size(0)), o_.batch_size);
      return sweep::weighted_mean(batches, device, [&](const sweep::Batch& b) {
        const auto nll = torch::nn::functional::cross_entropy(
            impl->forward(b.at("x")), b.at("y"), torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
        return std::make_pair(nll, torch::scalar_tensor(b.at("y").size(0)));
      });
    };
    m.test_metric = [this, impl, device] {
      const auto batches = batches_of(test_, torch::arange(test_.x.size(0)), o_.batch_size);
      return 100 * sweep::weighted_mean(batches, device, [&](const sweep::Batch& b) {
               const auto correct = (impl->forward(b.at("x")).argmax(1) == b.at("y")).sum();
               return std::make_pair(correct, torch::scalar_tensor(b.at("y").size(0)));
             });
    };
    return m;
  }

  std::vector<sweep::Batch> train_batches(int64_t epoch, const sweep::Point& p) override {
    auto gen = at::detail::createCPUGenerator(p.seed * 1000 + static_cast<uint64_t>(epoch));
    return batches_of(train_, torch::randperm(train_.x.size(0), gen), o_.batch_size);
  }

  int runs = 0;

 private:
  sweep::Options o_;
  int crash_at_;
  ToyData train_, val_, test_;
};

/// The toy program's command line: presets and a default that the tests override.
sweep::ProgramSpec toy_spec() {
  sweep::ProgramSpec s;
  s.name = "toy_sweep";
  s.description = "toy sweep";
  s.data_dir_env = "LORA_TOY_DATA_DIR_UNSET";
  s.model_subdir = "toy-mlp";
  s.defaults = {{"--targets", {"fc1", "fc2"}}, {"--max-len", {"64"}}};
  s.presets["quick"] = {"a few steps", {{"--epochs", {"1"}}, {"--ranks", {"2"}}, {"--lrs", {"1e-3"}},
                                        {"--batch-size", {"8"}}, {"--seeds", {"5", "6"}}, {"--max-len", {"16"}}}};
  s.presets["fullonly"] = {"FullFT only", {{"--ranks", {"none"}}, {"--full-lrs", {"1e-4", "1e-3"}}}};
  s.add_flags = [](CLI::App& app, sweep::Options& o) {
    o.extra["padding"] = "dynamic";
    app.add_option("--padding", o.extra["padding"], "toy padding");
  };
  return s;
}

sweep::Options parse(std::vector<std::string> args) { return sweep::parse_options(args, toy_spec()); }

/// The options of a toy sweep into `out`: 2 epochs of 4 steps per point, seed 3 unless
/// `more` gives --seeds.
sweep::Options toy_options(const fs::path& out, std::vector<std::string> more) {
  std::vector<std::string> args = {"--out", out.string(), "--epochs", "2", "--batch-size", "16", "--train-size",
                                   "64", "--val-size", "32"};
  if (std::find(more.begin(), more.end(), "--seeds") == more.end()) args.insert(args.end(), {"--seed", "3"});
  args.insert(args.end(), more.begin(), more.end());
  return parse(args);
}

/// Quiet hooks: output and progress go into `sink`, no PNG.
sweep::EngineHooks quiet(std::ostringstream& sink) {
  sweep::EngineHooks h;
  h.out = &sink;
  h.log = &sink;
  h.terminal = false;
  h.render_png = false;
  return h;
}

/// The JSON of `path` (REQUIRE-fails if it does not parse).
json load(const fs::path& path) {
  const auto doc = sweep::detail::read_json_if_valid(path);
  INFO(path.string());
  REQUIRE(doc.has_value());
  return *doc;
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

/// `j` without the fields that depend on when and where a run happened.
json without_environment(json j) {
  if (j.is_object()) {
    j.erase("wall_time_s");
    j.erase("environment");
    for (auto& kv : j.items()) kv.value() = without_environment(kv.value());
  }
  return j;
}

/// Whether every tag of `xml` is closed in order (an XML-ish check; text holds no '<').
bool tags_balanced(const std::string& xml, std::string& problem) {
  std::vector<std::string> open;
  for (size_t at = xml.find('<'); at != std::string::npos; at = xml.find('<', at + 1)) {
    const auto end = xml.find('>', at);
    if (end == std::string::npos) return problem = "unterminated tag", false;
    const std::string tag = xml.substr(at + 1, end - at - 1);
    if (tag.empty() || tag[0] == '?' || tag[0] == '!') continue;
    const auto name_of = [](const std::string& t) { return t.substr(0, t.find_first_of(" \n/")); };
    if (tag[0] == '/') {
      if (open.empty() || open.back() != tag.substr(1)) return problem = "unexpected </" + tag.substr(1) + ">", false;
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(name_of(tag));
    }
  }
  if (!open.empty()) return problem = "unclosed <" + open.back() + ">", false;
  return true;
}

size_t count_of(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (size_t at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("sweep: LR strings and point keys", "[sweep]") {
  CHECK(sweep::lr_string(1e-5) == "1e-05");
  CHECK(sweep::lr_string(3e-5) == "3e-05");
  CHECK(sweep::lr_string(3e-6) == "3e-06");
  CHECK(sweep::lr_string(1e-4) == "0.0001");
  CHECK(sweep::lr_string(3e-4) == "0.0003");
  CHECK(sweep::lr_string(2.5e-4) == "0.00025");
  CHECK(sweep::lr_string(0.5) == "0.5");
  CHECK(sweep::lr_string(1.0) == "1.0");
  CHECK(sweep::lr_string(123.25) == "123.25");
  CHECK(sweep::lr_string(1e6) == "1000000.0");
  CHECK(sweep::lr_string(1e16) == "1e+16");
  CHECK(sweep::lr_string(1e30) == "1e+30");
  CHECK(sweep::lr_key(1e-4) == "1e-04");
  CHECK(sweep::lr_key(std::stod("0.0001")) == sweep::lr_key(std::stod("1e-4")));
  CHECK(sweep::lr_key(3.5e-5) == "3.5e-05");
  CHECK(sweep::lr_key(1e30) == "1e+30");

  sweep::Point p;
  p.rank = 16;
  p.lr = 1e-4;
  p.seed = 42;
  CHECK(sweep::key(p) == "lora_r16_lr1e-04_s42");
  p.method = "full";
  p.rank = 0;
  p.lr = 3e-5;
  CHECK(sweep::key(p) == "full_lr3e-05_s42");
  CHECK(sweep::column(p) == "full");

  const auto o = parse({"--lrs", "1e-4", "0.0001"});
  const auto twice = error_of<examples::UsageError>([&] { sweep::build_grid(o); });
  CHECK(contains(twice, "lora_r16_lr1e-04_s42"));
  CHECK(contains(twice, "twice"));
}

TEST_CASE("sweep: --shard parsing and slicing", "[sweep]") {
  const auto s = sweep::parse_shard("1/4");
  CHECK(s.index == 1);
  CHECK(s.count == 4);
  for (const std::string bad : {"4/4", "0/0", "-1/2", "1/-2", "a/b", "3", "1/2/3", "", "/2", "1/"}) {
    const auto e = error_of<examples::UsageError>([&] { sweep::parse_shard(bad); });
    INFO(bad << " -> " << e);
    CHECK(contains(e, "--shard"));
    CHECK(contains(e, "'" + bad + "'"));
    CHECK(contains(e, "0 <= I < N"));
  }
  CHECK(contains(error_of<examples::UsageError>([] { parse({"--shard", "2/2"}); }), "I outside 0..N-1"));
  CHECK(contains(error_of<examples::UsageError>([] { parse({"--shard", "0/0"}); }), "N <= 0"));

  const auto grid = sweep::build_grid(parse({"--ranks", "2", "4", "8", "--lrs", "1e-3", "1e-2", "--full-finetune"}));
  REQUIRE(grid.size() == 8);
  std::multiset<std::string> seen;
  for (int64_t i = 0; i < 3; ++i) {
    const auto part = sweep::select_shard(grid, {i, 3});
    CHECK(part.size() >= 2);
    CHECK(part.size() <= 3);
    for (const auto& p : part) seen.insert(sweep::key(p));
    const auto again = sweep::select_shard(grid, {i, 3});  // deterministic
    REQUIRE(again.size() == part.size());
    for (size_t k = 0; k < part.size(); ++k) CHECK(sweep::key(again[k]) == sweep::key(part[k]));
  }
  CHECK(seen.size() == grid.size());
  for (const auto& p : grid) CHECK(seen.count(sweep::key(p)) == 1);
}

TEST_CASE("sweep: option parsing, presets and conversions", "[sweep]") {
  SECTION("defaults") {
    const auto o = parse({});
    CHECK(o.lrs == std::vector<double>{1e-5, 3e-5, 1e-4, 3e-4});
    CHECK(o.ranks == std::vector<int64_t>{16, 32, 64, 128});
    CHECK(o.full_lrs.empty());
    CHECK(o.seeds == std::vector<uint64_t>{42});
    CHECK(o.epochs == 5);
    CHECK(o.batch_size == 32);
    CHECK(o.train_size == 10000);
    CHECK(o.val_size == 2000);
    CHECK(o.alpha == 32);
    CHECK(o.targets == std::vector<std::string>{"fc1", "fc2"});  // the program's default
    CHECK(o.max_len == 64);
    CHECK(o.out == "runs/toy_sweep");
    CHECK(o.extra.at("padding") == "dynamic");
    CHECK(o.device == "cpu");
    CHECK(!o.sharded);
    CHECK(contains(o.model_dir, "toy-mlp"));
    CHECK(sweep::build_grid(o).size() == 16);
  }
  SECTION("--batch_size and --batch-size") {
    CHECK(parse({"--batch_size", "7"}).batch_size == 7);
    CHECK(parse({"--batch-size", "9"}).batch_size == 9);
    CHECK(parse({"--batch_size=11"}).batch_size == 11);
  }
  SECTION("a preset, overridden by explicit flags") {
    const auto q = parse({"--preset", "quick"});
    CHECK(q.epochs == 1);
    CHECK(q.ranks == std::vector<int64_t>{2});
    CHECK(q.batch_size == 8);
    CHECK(q.seeds == std::vector<uint64_t>{5, 6});
    CHECK(q.max_len == 16);                                         // the preset beats the program default
    CHECK(q.targets == std::vector<std::string>{"fc1", "fc2"});     // untouched by the preset
    const auto o = parse({"--preset", "quick", "--epochs", "3", "--batch_size", "4", "--rank", "8", "--seed", "9",
                          "--max-len", "32", "--targets", "fc1"});
    CHECK(o.epochs == 3);
    CHECK(o.batch_size == 4);
    CHECK(o.ranks == std::vector<int64_t>{8});     // --rank hides the preset's --ranks
    CHECK(o.seeds == std::vector<uint64_t>{9});    // --seed hides the preset's --seeds
    CHECK(o.max_len == 32);
    CHECK(o.targets == std::vector<std::string>{"fc1"});
    CHECK(o.lrs == std::vector<double>{1e-3});     // not given: the preset's
    const auto e = error_of<examples::UsageError>([] { parse({"--preset", "nope"}); });
    CHECK(contains(e, "--preset"));
    CHECK(contains(e, "'nope'"));
    CHECK(contains(e, "quick"));
  }
  SECTION("FullFT: --full-finetune, --full-lrs, --ranks none") {
    const auto both = parse({"--lrs", "1e-4", "--ranks", "4", "--full-finetune"});
    CHECK(both.full_lrs == std::vector<double>{1e-4});
    const auto g = sweep::build_grid(both);
    REQUIRE(g.size() == 2);
    CHECK(g[0].is_full());
    CHECK(sweep::key(g[1]) == "lora_r4_lr1e-04_s42");
    const auto only = parse({"--preset", "fullonly"});
    CHECK(only.ranks.empty());
    CHECK(only.full_lrs == std::vector<double>{1e-4, 1e-3});
    CHECK(sweep::build_grid(only).size() == 2);
    CHECK(parse({"--ranks", "--full-lrs", "1e-5"}).ranks.empty());
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--ranks", "none"}); }), "nothing to do"));
  }
  SECTION("alpha, scaling, init and the lora::Config") {
    const auto o = parse({"--ranks", "16", "--alpha-per-rank", "10", "--scaling", "alpha-over-rank", "--init",
                          "gaussian-gaussian", "--init-std", "0.5"});
    const auto grid = sweep::build_grid(o);
    const auto c = sweep::point_run(o, grid.front()).lora.value();
    CHECK(c.rank == 16);
    CHECK(c.alpha == 160);
    CHECK(c.scaling.scale(c.alpha, c.rank) == 10);
    CHECK(contains(c.init.name, "gaussian-gaussian"));
    CHECK(c.targets == std::vector<std::string>{"fc1", "fc2"});
    CHECK(c.seed == 42);
    const auto sqrt = parse({"--ranks", "16", "--scaling", "alpha-over-sqrt-rank"});
    const auto cs = sweep::point_run(sqrt, sweep::build_grid(sqrt).front()).lora.value();
    CHECK(std::abs(cs.scaling.scale(cs.alpha, cs.rank) - 8.0) < 1e-12);
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--alpha", "8", "--alpha-per-rank", "2"}); }), "--alpha"));
    const auto dora = parse({"--dora"});
    CHECK(sweep::point_run(dora, sweep::build_grid(dora).front()).lora.value().use_dora);
    CHECK(!sweep::point_run(o, grid.front()).lora.value().use_dora);
  }
  SECTION("bad values name the flag, the value and what is allowed") {
    const auto scaling = error_of<examples::UsageError>([] { parse({"--scaling", "alpha-over-r"}); });
    CHECK(contains(scaling, "--scaling"));
    CHECK(contains(scaling, "'alpha-over-r'"));
    CHECK(contains(scaling, "alpha-over-sqrt-rank"));
    const auto init = error_of<examples::UsageError>([] { parse({"--init", "kaiming"}); });
    CHECK(contains(init, "--init"));
    CHECK(contains(init, "pissa"));
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--lrs", "1e-4", "fast"}); }), "--lrs: 'fast'"));
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--lrs", "-1e-4"}); }), "--lrs: '-1e-4'"));
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--epochs", "0"}); }), "--epochs: '0'"));
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--ranks", "16", "x"}); }), "--ranks: 'x'"));
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--device", "tpu"}); }), "cpu, cuda, cuda:N"));
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--rank", "4", "--ranks", "8"}); }), "--rank"));
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--merge", "--shard", "0/2"}); }), "--merge"));
    CHECK(contains(error_of<examples::UsageError>([] { parse({"--bogus"}); }), "--bogus"));
  }
  SECTION("--help and task flags") {
    bool helped = false;
    try {
      parse({"--help"});
    } catch (const sweep::HelpRequested& h) {
      helped = true;
      CHECK(contains(h.text, "--batch-size"));
      CHECK(contains(h.text, "--padding"));
      CHECK(contains(h.text, "quick"));
    }
    CHECK(helped);
    CHECK(parse({"--padding", "fixed"}).extra.at("padding") == "fixed");
  }
}

TEST_CASE("sweep: the parabola in log10(LR) recovers a known optimum", "[sweep]") {
  const auto v = sweep::parabola_vertex({-5, -4.5, -3}, {-2 * 1 + 91.0, -2 * 0.25 + 91.0, -2 * 1 + 91.0});
  REQUIRE(v.has_value());
  CHECK(std::abs(v->x + 4) < 1e-12);
  CHECK(std::abs(v->y - 91) < 1e-12);
  CHECK(v->a < 0);
  CHECK(!sweep::parabola_vertex({1, 2, 3}, {1, 2, 3}).has_value());  // collinear

  // accuracy = 90 - 3 (log10 lr - log10 5e-5)^2 on the seed study's grid: the optimum is 5e-5.
  sweep::Curve c;
  c.label = "r16";
  for (const double lr : {1e-5, 3e-5, 1e-4, 3e-4}) {
    const double d = std::log10(lr) - std::log10(5e-5);
    c.cells.push_back({lr, {90 - 3 * d * d}, 1, 0});
  }
  const auto o = sweep::find_optimum(c, true);
  CHECK(o.found);
  CHECK(o.interpolated);
  CHECK(o.grid_lr == 3e-5);
  CHECK(std::abs(o.lr / 5e-5 - 1) < 1e-9);
  CHECK(std::abs(o.value - 90) < 1e-9);
  // The plot marks it there.
  const auto svg = sweep::plot_svg({c}, {o}, "accuracy", "known parabola");
  CHECK(contains(svg, "r16 optimum: LR 5e-05 (interpolated)"));
  CHECK(count_of(svg, "<polyline") == 1);
  // Lower is better (a loss): the same parabola upside down.
  for (auto& cell : c.cells) cell.values[0] = 180 - cell.values[0];
  const auto low = sweep::find_optimum(c, false);
  CHECK(low.interpolated);
  CHECK(std::abs(low.lr / 5e-5 - 1) < 1e-9);
  // Best at the edge of the grid: the grid point, and a note.
  c.cells.pop_back();
  c.cells.pop_back();
  c.cells.erase(c.cells.begin());
  c.cells.push_back({1e-3, {}, 1, 1});  // a diverged LR
  const auto edge = sweep::find_optimum(c, true);
  CHECK(!edge.interpolated);
  CHECK(edge.lr == 3e-5);
  CHECK(contains(edge.note, "edge"));
}

TEST_CASE("sweep: the progress bar prints lines in logs", "[sweep]") {
  std::ostringstream log;
  sweep::Progress p(log, /*terminal=*/false, /*every_percent=*/25);
  p.begin_sweep(2, 200);
  p.begin_point(0, "lora_r2_lr1e-03_s3", 100);
  for (int s = 10; s <= 100; s += 10) p.update(s, 100, 0.5);
  p.end_point("done lora_r2_lr1e-03_s3");
  const auto text = log.str();
  INFO(text);
  CHECK(count_of(text, "ETA") == 2);  // at 25% and 50%
  CHECK(contains(text, "[point 1/2 lora_r2_lr1e-03_s3] step 50/100 loss 0.5000"));
  CHECK(contains(text, "steps/s"));
  CHECK(contains(text, "done lora_r2_lr1e-03_s3\n"));
  CHECK(sweep::format_duration(3725) == "1h02m");
  CHECK(sweep::format_duration(65) == "1m05s");
}

TEST_CASE("sweep: a 2-LR x 2-rank + FullFT sweep writes every output and resumes", "[sweep]") {
  const auto dir = temp_dir("full");
  const auto o = toy_options(dir, {"--lrs", "3e-3", "3e-2", "--ranks", "2", "4", "--full-finetune"});
  std::ostringstream sink;
  auto hooks = quiet(sink);
  hooks.render_png = true;
  ToyTask task(o);
  const auto first = sweep::run_sweep(o, task, hooks);
  INFO(sink.str());
  CHECK(first.ran == 6);
  CHECK(first.complete);
  CHECK(first.reported);
  CHECK(task.runs == 6);

  // points/*.json: one per point, each with every setting and the metrics.
  const auto points = files_in(dir / "points");
  REQUIRE(points.size() == 6);
  const auto p = load(dir / "points" / "lora_r4_lr3e-02_s3.json");
  CHECK(p.at("settings").at("rank") == 4);
  CHECK(p.at("settings").at("alpha") == 32.0);
  CHECK(p.at("settings").at("scale") == 8.0);
  CHECK(p.at("settings").at("epochs") == 2);
  CHECK(p.at("settings").at("batch_size") == 16);
  CHECK(p.at("settings").at("extra").at("padding") == "dynamic");
  CHECK(p.at("environment").at("lora_version") == lora::version());
  CHECK(p.at("environment").at("libtorch_version").get<std::string>().rfind(std::to_string(TORCH_VERSION_MAJOR), 0) == 0);
  CHECK(p.at("results").at("steps") == 8);
  CHECK(p.at("results").at("train_losses").size() == 2);
  CHECK(p.at("results").at("val_losses").size() == 2);
  CHECK(p.at("results").at("test_acc").is_number());
  CHECK(p.at("results").at("trainable_parameters") == 4 * (8 + 16) + 4 * (16 + 4));

  // results.json: the seed's schema under runs/<column>/<LR string>.
  const auto r = load(dir / "results.json");
  CHECK(r.at("metric").at("key") == "test_acc");
  CHECK(r.at("columns") == json({"full", "lora_r2", "lora_r4"}));
  for (const std::string col : {"full", "lora_r2", "lora_r4"})
    for (const std::string lr : {"0.003", "0.03"}) {
      INFO(col << " " << lr);
      const auto& rec = r.at("runs").at(col).at(lr);
      for (const char* k : {"best_val_loss", "test_acc", "train_losses", "val_losses"}) CHECK(rec.contains(k));
      CHECK(rec.at("test_acc").is_number());
      CHECK(rec.at("diverged") == false);
      CHECK(rec.at("seeds").contains("3"));
    }
  CHECK(r.at("settings").at("epochs") == 2);  // shared settings once, at the top
  CHECK(r.at("runs").at("lora_r2").at("0.003").at("seeds").at("3").at("settings").at("rank") == 2);
  CHECK(r.at("optimum").at("test_acc").contains("lora_r2"));
  CHECK(r.at("missing").empty());

  // summary.md: the table, the optima, the ratio line.
  const auto summary = lora_test::read_text(dir / "summary.md");
  CHECK(contains(summary, "| LR \\ test_acc | FullFT | r2 | r4 |"));
  CHECK(contains(summary, "| 0.003 |"));
  CHECK(contains(summary, "LoRA/FullFT ratio of optimal LRs by test_acc: r2 "));
  CHECK(contains(summary, "x (from grid points, see notes)"));
  CHECK(contains(summary, "edge of the grid"));  // two LRs: never interpolated
  CHECK(contains(sink.str(), "LoRA/FullFT ratio"));  // printed too

  // plot.svg: well-formed, one polyline per rank and a dashed one for FullFT, optima marked.
  const auto svg = lora_test::read_text(dir / "plot.svg");
  std::string problem;
  CHECK(tags_balanced(svg, problem));
  INFO(problem);
  CHECK(contains(svg, "<svg"));
  CHECK(count_of(svg, "<polyline") == 3);
  CHECK(count_of(svg, "stroke-dasharray") == 2);  // FullFT's line and legend entry
  CHECK(contains(svg, "optimum"));
  CHECK(contains(svg, ">3e-3<"));
  CHECK((fs::exists(dir / "plot.png") || contains(sink.str(), "only SVG written")));

  // A rerun skips every finished point and leaves the files alone.
  std::map<fs::path, fs::file_time_type> mtimes;
  for (const auto& f : points) mtimes[f] = fs::last_write_time(f);
  ToyTask again(o);
  std::ostringstream sink2;
  const auto second = sweep::run_sweep(o, again, quiet(sink2));
  CHECK(second.skipped == 6);
  CHECK(second.ran == 0);
  CHECK(again.runs == 0);
  for (const auto& f : points) CHECK(fs::last_write_time(f) == mtimes[f]);
  CHECK(without_environment(load(dir / "results.json")) == without_environment(r));

  // The same --out with other settings is refused rather than mixed.
  const auto other = toy_options(dir, {"--lrs", "3e-3", "3e-2", "--ranks", "2", "4", "--full-finetune", "--alpha", "8"});
  ToyTask third(other);
  std::ostringstream sink3;
  const auto e = error_of<examples::Error>([&] { sweep::run_sweep(other, third, quiet(sink3)); });
  CHECK(contains(e, "other settings"));
  CHECK(contains(e, "alpha"));

  // --dry-run: the grid, what is done, the cost.
  std::ostringstream plan;
  auto dry = toy_options(dir, {"--lrs", "3e-3", "3e-2", "0.3", "--ranks", "2", "4", "--full-finetune", "--dry-run"});
  ToyTask dry_task(dry);
  sweep::run_sweep(dry, dry_task, quiet(plan));
  INFO(plan.str());
  CHECK(contains(plan.str(), "9 points"));
  CHECK(contains(plan.str(), "lora_r2_lr3e-03_s3  done"));
  CHECK(contains(plan.str(), "lora_r2_lr3e-01_s3  to run"));
  CHECK(contains(plan.str(), "Cost: 3 points to run x 8 steps = 24 steps"));
  CHECK(dry_task.runs == 0);
  cleanup(dir);
}

TEST_CASE("sweep: a crash mid-sweep leaves no corrupt file and the rerun finishes the rest", "[sweep]") {
  const auto dir = temp_dir("crash");
  const auto o = toy_options(dir, {"--lrs", "3e-3", "3e-2", "--ranks", "2", "4", "--full-finetune"});
  std::ostringstream sink;

  SECTION("the process dies in the middle of the third point") {
    ToyTask task(o, /*crash_at=*/3);
    bool crashed = false;
    try {
      sweep::run_sweep(o, task, quiet(sink));
    } catch (const std::runtime_error& e) {
      crashed = contains(e.what(), "simulated crash");
    }
    CHECK(crashed);
    // ... and another was killed while writing its file.
    std::ofstream(dir / "points" / "lora_r4_lr3e-02_s3.json.tmp.999999") << "{\"key\": \"lora_r4_lr3";
  }
  SECTION("the sweep is stopped after two points") {
    ToyTask task(o);
    auto hooks = quiet(sink);
    int done = 0;
    hooks.after_point = [&](const sweep::RunRecord&) { return ++done < 2; };
    const auto out = sweep::run_sweep(o, task, hooks);
    CHECK(!out.complete);
    CHECK(out.ran == 2);
  }
  std::vector<fs::path> finished;
  for (const auto& f : files_in(dir / "points"))
    if (f.extension() == ".json") finished.push_back(f);
  REQUIRE(finished.size() == 2);
  std::map<fs::path, fs::file_time_type> mtimes;
  for (const auto& f : finished) {
    CHECK(load(f).at("results").at("test_acc").is_number());  // whole, valid files
    mtimes[f] = fs::last_write_time(f);
  }

  ToyTask rerun(o);
  const auto out = sweep::run_sweep(o, rerun, quiet(sink));
  CHECK(out.skipped == 2);
  CHECK(out.ran == 4);
  CHECK(rerun.runs == 4);
  CHECK(out.complete);
  for (const auto& f : finished) CHECK(fs::last_write_time(f) == mtimes[f]);
  const auto files = files_in(dir / "points");
  CHECK(files.size() == 6);  // no temporary file left
  for (const auto& f : files) CHECK(f.extension() == ".json");
  CHECK(load(dir / "results.json").at("missing").empty());
  cleanup(dir);
}

TEST_CASE("sweep: --shard 0/2 + --shard 1/2 + --merge equal one unsharded run", "[sweep]") {
  const auto one = temp_dir("one"), split = temp_dir("split");
  const std::vector<std::string> grid = {"--lrs", "3e-3", "3e-2", "--ranks", "2", "4", "--full-finetune"};
  std::ostringstream sink;
  const auto whole = toy_options(one, grid);
  ToyTask t0(whole);
  sweep::run_sweep(whole, t0, quiet(sink));

  size_t ran = 0;
  for (const std::string shard : {"0/2", "1/2"}) {
    auto args = grid;
    args.insert(args.end(), {"--shard", shard});
    const auto o = toy_options(split, args);
    ToyTask t(o);
    const auto out = sweep::run_sweep(o, t, quiet(sink));
    CHECK(out.ran == 3);
    CHECK(!out.reported);  // a shard writes only its points
    ran += out.ran;
  }
  CHECK(ran == 6);
  CHECK(!fs::exists(split / "results.json"));
  auto args = grid;
  args.push_back("--merge");
  const auto merge = toy_options(split, args);
  ToyTask tm(merge);
  const auto merged = sweep::run_sweep(merge, tm, quiet(sink));
  CHECK(merged.reported);
  CHECK(tm.runs == 0);

  const auto a = load(one / "results.json"), b = load(split / "results.json");
  CHECK(without_environment(a.at("runs")) == without_environment(b.at("runs")));
  CHECK(a.at("settings") == b.at("settings"));
  CHECK(a.at("optimum") == b.at("optimum"));
  CHECK(lora_test::read_text(one / "summary.md") == lora_test::read_text(split / "summary.md"));

  // --merge with nothing to merge says so.
  const auto empty = temp_dir("empty");
  auto none = toy_options(empty, args);
  ToyTask tn(none);
  CHECK(contains(error_of<examples::Error>([&] { sweep::run_sweep(none, tn, quiet(sink)); }), "no finished point"));
  for (const auto& d : {one, split, empty}) cleanup(d);
}

TEST_CASE("sweep: a diverging run is recorded as diverged and the sweep goes on", "[sweep]") {
  const auto dir = temp_dir("diverge");
  const auto o = toy_options(dir, {"--lrs", "1e-2", "1e30", "--ranks", "2", "--full-finetune", "--seeds", "3", "4"});
  std::ostringstream sink;
  ToyTask task(o);
  const auto out = sweep::run_sweep(o, task, quiet(sink));
  INFO(sink.str());
  CHECK(out.ran == 8);
  CHECK(out.diverged == 4);
  CHECK(out.complete);

  const auto p = load(dir / "points" / "lora_r2_lr1e+30_s3.json");
  CHECK(p.at("results").at("diverged") == true);
  CHECK(p.at("results").at("test_acc").is_null());
  CHECK(contains(p.at("results").at("diverged_reason").get<std::string>(), "loss"));

  const auto r = load(dir / "results.json");
  const auto& bad = r.at("runs").at("lora_r2").at("1e+30");
  CHECK(bad.at("diverged") == true);
  CHECK(bad.at("n_diverged") == 2);
  CHECK(bad.at("test_acc").is_null());
  const auto& good = r.at("runs").at("full").at("0.01");
  CHECK(good.at("diverged") == false);
  CHECK(good.at("n_seeds") == 2);
  CHECK(good.at("test_acc").is_number());
  CHECK(good.at("test_acc_std").is_number());  // two seeds: a spread
  CHECK(r.at("seeds") == json({3, 4}));

  const auto summary = lora_test::read_text(dir / "summary.md");
  CHECK(contains(summary, "| 1e+30 | diverged | diverged |"));
  CHECK(contains(summary, " ± "));
  CHECK(contains(summary, "mean ± sample std over seeds"));
  const auto svg = lora_test::read_text(dir / "plot.svg");
  CHECK(contains(svg, "diverged at LR 1e+30"));
  cleanup(dir);
}

TEST_CASE("sweep: LoRA+ reaches the optimizer and the records", "[sweep]") {
  const auto dir = temp_dir("loraplus");
  const auto o = toy_options(dir, {"--lrs", "1e-2", "--ranks", "2", "--loraplus-ratio", "16"});
  ToyTask task(o);
  task.prepare();
  const auto point = sweep::build_grid(o).front();
  const auto model = task.make_model(point);
  const auto adapters = lora::inject(*model.module, sweep::point_run(o, point).lora.value());
  sweep::TrainSettings s;
  s.lr = 1e-2;
  s.loraplus_ratio = 16;
  const auto opt = sweep::detail::make_optimizer(model, &adapters, s);
  std::vector<double> lrs;
  for (const auto& g : opt->param_groups()) lrs.push_back(g.options().get_lr());
  CHECK(lrs == std::vector<double>{1e-2, 16e-2});  // A, then B

  std::ostringstream sink;
  ToyTask run(o);
  const auto out = sweep::run_sweep(o, run, quiet(sink));
  INFO(sink.str());
  CHECK(out.ran == 1);
  const auto p = load(dir / "points" / "lora_r2_lr1e-02_s3.json");
  CHECK(p.at("settings").at("loraplus_ratio") == 16.0);
  CHECK(p.at("settings").at("dora") == false);
  CHECK(p.at("results").at("test_acc").is_number());
  CHECK(p.at("results").at("trainable_parameters") == 2 * (8 + 16) + 2 * (16 + 4));
  cleanup(dir);
}

TEST_CASE("sweep: FullFT steps a tied weight once per step, and its points say so", "[sweep]") {
  // A weight held under two names (GPT-2's lm_head and wte): LibTorch lists it twice in
  // parameters(); handed to AdamW as is, it would get two updates per step.
  struct TiedImpl : torch::nn::Module {
    TiedImpl() {  // as models/gpt2.hpp ties them: the embedding built on the head's weight
      head = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(3, 5).bias(false)));
      emb = register_module("emb", torch::nn::Embedding(torch::nn::EmbeddingOptions(5, 3)._weight(head->weight)));
    }
    torch::nn::Embedding emb{nullptr};
    torch::nn::Linear head{nullptr};
  };
  auto net = std::make_shared<TiedImpl>();
  REQUIRE(net->parameters().size() == 2);  // the premise: listed twice
  sweep::Model model;
  model.module = net;
  sweep::TrainSettings s;
  s.lr = 0.1;
  auto opt = sweep::detail::make_optimizer(model, nullptr, s);
  REQUIRE(opt->param_groups().size() == 1);
  CHECK(opt->param_groups()[0].params().size() == 1);
  // One step moves the weight by one AdamW update: lr * sign(g) (first step, no decay) plus decay.
  const auto w0 = net->emb->weight.detach().clone();
  net->emb->weight.mutable_grad() = torch::ones_like(w0);
  opt->step();
  const auto moved = (w0 - net->emb->weight.detach()).abs().max().item<double>();
  std::cout << "  tied weight moved by " << moved << " in one step (one update: ~" << s.lr << ")\n";
  CHECK(moved < 1.5 * s.lr);
}

TEST_CASE("sweep: what a point trains with and what its file records both come from point_run()", "[sweep]") {
  // Change a default no flag sets (AdamW's weight decay and beta2): the optimizer the engine
  // trains with and the settings its point files record must both follow, and a rerun with the
  // defaults must refuse those files.
  const auto dir = temp_dir("point_run_defaults"), changed_dir = temp_dir("point_run_changed");
  const std::vector<std::string> flags = {"--lrs", "1e-2", "--ranks", "2", "--full-lrs", "1e-2"};
  const auto o = toy_options(dir, flags);
  auto changed = toy_options(changed_dir, flags);
  const sweep::AdamWSettings defaults;
  REQUIRE(o.adamw.weight_decay == defaults.weight_decay);
  changed.adamw.weight_decay = defaults.weight_decay * 100;
  changed.adamw.beta2 = 0.99;
  std::ostringstream sink;
  ToyTask task(o), changed_task(changed);
  REQUIRE(sweep::run_sweep(o, task, quiet(sink)).ran == 2);
  REQUIRE(sweep::run_sweep(changed, changed_task, quiet(sink)).ran == 2);
  INFO(sink.str());
  for (const auto& p : sweep::build_grid(o)) {
    INFO(sweep::key(p));
    const auto run = sweep::point_run(changed, p);
    CHECK(run.train.adamw.weight_decay == changed.adamw.weight_decay);
    CHECK(run.train.adamw.beta2 == 0.99);
    const auto file = load(changed_dir / "points" / (sweep::key(p) + ".json"));
    const auto& recorded = file.at("settings").at("optimizer");
    CHECK(recorded.at("weight_decay") == run.train.adamw.weight_decay);
    CHECK(recorded.at("betas") == json({run.train.adamw.beta1, run.train.adamw.beta2}));
    CHECK(file.at("settings") == sweep::detail::point_settings(changed, changed_task, p));
    const auto base = load(dir / "points" / (sweep::key(p) + ".json"));
    CHECK(base.at("settings").at("optimizer").at("weight_decay") == defaults.weight_decay);
    // The engine trained with them: same seed, data and LR, other losses.
    CHECK(file.at("results").at("train_losses") != base.at("results").at("train_losses"));
    // A rerun with the defaults does not take these files as its own, and says why.
    auto rerun = o;
    rerun.out = changed_dir.string();
    const auto e = error_of<examples::Error>([&] { sweep::detail::load_done(rerun, task, p); });
    CHECK(contains(e, "other settings"));
    CHECK(contains(e, "optimizer"));
    CHECK(sweep::detail::load_done(changed, changed_task, p).has_value());
  }
  cleanup(dir);
  cleanup(changed_dir);
}

TEST_CASE("sweep: several seeds give per-seed optima, ratio intervals, error bars and loss curves", "[sweep]") {
  const auto dir = temp_dir("seeds");
  const auto o = toy_options(dir, {"--lrs", "1e-3", "3e-3", "1e-2", "3e-2", "1e-1", "--ranks", "2", "--full-lrs", "1e-3",
                                   "3e-3", "1e-2", "3e-2", "1e-1", "--seeds", "3", "4", "5"});
  std::ostringstream sink;
  ToyTask task(o);
  const auto out = sweep::run_sweep(o, task, quiet(sink));
  INFO(sink.str());
  REQUIRE(out.ran == 30);
  const auto r = load(dir / "results.json");

  // Each seed's optimum, and the ratio seed by seed: LoRA's optimum / FullFT's of the same seed.
  const auto& opt = r.at("optimum").at("test_acc");
  const auto& full = opt.at("full").at("seeds");
  const auto& lora = opt.at("lora_r2").at("seeds");
  REQUIRE(full.size() == 3);
  REQUIRE(lora.size() == 3);
  std::vector<double> logs;
  for (const std::string seed : {"3", "4", "5"}) {
    INFO("seed " << seed);
    const double ratio = lora.at(seed).at("lr_ratio_to_full");
    CHECK(ratio == Approx(lora.at(seed).at("lr").get<double>() / full.at(seed).at("lr").get<double>()).epsilon(1e-12));
    logs.push_back(std::log10(ratio));
    // The seed's optimum is the one of its own curve: recompute it from that seed's records.
    sweep::Curve c;
    c.column = "lora_r2";
    for (const auto& [lr, rec] : r.at("runs").at("lora_r2").items())
      c.cells.push_back({std::stod(lr), {rec.at("seeds").at(seed).at("test_acc").get<double>()}, 1, 0});
    std::sort(c.cells.begin(), c.cells.end(), [](const auto& a, const auto& b) { return a.lr < b.lr; });
    CHECK(sweep::find_optimum(c, true).lr == Approx(lora.at(seed).at("lr").get<double>()).epsilon(1e-12));
  }
  // The ratio's interval: Student t (2 degrees of freedom: 4.303) on log10 of the three ratios.
  const auto& iv = opt.at("lora_r2").at("lr_ratio_interval");
  REQUIRE(iv.is_object());
  CHECK(iv.at("n") == 3);
  const double m = (logs[0] + logs[1] + logs[2]) / 3;
  double ss = 0;
  for (const double l : logs) ss += (l - m) * (l - m);
  const double half = 4.303 * std::sqrt(ss / 2) / std::sqrt(3.0);
  CHECK(iv.at("geo_mean").get<double>() == Approx(std::pow(10, m)).epsilon(1e-9));
  CHECK(iv.at("lo").get<double>() == Approx(std::pow(10, m - half)).epsilon(1e-9));
  CHECK(iv.at("hi").get<double>() == Approx(std::pow(10, m + half)).epsilon(1e-9));
  CHECK(opt.at("full").at("lr_ratio_interval").is_null());
  CHECK(opt.at("full").at("lr_interval").at("n") == 3);
  const auto summary = lora_test::read_text(dir / "summary.md");
  CHECK(contains(summary, "Over seeds"));
  CHECK(contains(summary, "| r2 |"));

  // Error bars: one per LR and line, mean ± std of the seeds' values in results.json.
  const auto svg = lora_test::read_text(dir / "plot.svg");
  CHECK(count_of(svg, "class=\"errorbar\"") == 10);
  const auto attr = [](const std::string& tag, const std::string& name) {
    const auto at = tag.find(name + "=\"") + name.size() + 2;
    return tag.substr(at, tag.find('"', at) - at);
  };
  size_t checked = 0;
  for (size_t at = svg.find("<g id=\""); at != std::string::npos; at = svg.find("<g id=\"", at + 1)) {
    const std::string column = attr(svg.substr(at, 40), "id");
    const auto group = svg.substr(at, svg.find("</g>", at) - at);
    for (size_t b = group.find("class=\"errorbar\""); b != std::string::npos; b = group.find("class=\"errorbar\"", b + 1)) {
      const auto tag = group.substr(b, group.find('>', b) - b);
      const auto& rec = r.at("runs").at(column).at(attr(tag, "data-lr"));
      std::vector<double> v;
      for (const auto& [seed, s] : rec.at("seeds").items()) v.push_back(s.at("test_acc").get<double>());
      const double mean = (v[0] + v[1] + v[2]) / 3;
      const double sd = std::sqrt(((v[0] - mean) * (v[0] - mean) + (v[1] - mean) * (v[1] - mean) +
                                   (v[2] - mean) * (v[2] - mean)) / 2);
      INFO(column << " " << tag);
      CHECK(std::stod(attr(tag, "data-mean")) == Approx(mean).epsilon(1e-12));
      CHECK(std::stod(attr(tag, "data-lo")) == Approx(mean - sd).epsilon(1e-12));
      CHECK(std::stod(attr(tag, "data-hi")) == Approx(mean + sd).epsilon(1e-12));
      CHECK(rec.at("test_acc_std").get<double>() == Approx(sd).epsilon(1e-12));
      ++checked;
    }
  }
  CHECK(checked == 10);

  // A training-loss curve in every point file, and one plot per LR with both lines.
  const auto p = load(dir / "points" / "lora_r2_lr1e-02_s4.json");
  const auto& tc = p.at("results").at("train_curve");
  CHECK(tc.at("step").size() == tc.at("loss").size());
  CHECK(tc.at("step").back() == 8);
  const auto curves = lora_test::read_text(dir / "curves" / "lr1e-02.svg");
  std::string problem;
  CHECK(tags_balanced(curves, problem));
  CHECK(count_of(curves, "<polyline") == 2);
  cleanup(dir);
}

TEST_CASE("sweep: a point claimed by another process is left to it", "[sweep]") {
  const auto dir = temp_dir("claim");
  const auto o = toy_options(dir, {"--lrs", "3e-3", "3e-2", "--ranks", "2"});
  fs::create_directories(dir / "locks");
  // flock() locks belong to an open file: a second claim, even from this process, is refused.
  auto held = sweep::PointClaim::try_claim(dir / "locks" / "lora_r2_lr3e-02_s3.lock");
  REQUIRE(held.has_value());
  CHECK(!sweep::PointClaim::try_claim(dir / "locks" / "lora_r2_lr3e-02_s3.lock").has_value());
  std::ostringstream sink;
  ToyTask task(o);
  const auto out = sweep::run_sweep(o, task, quiet(sink));
  INFO(sink.str());
  CHECK(out.ran == 1);
  CHECK(!out.complete);
  CHECK(contains(sink.str(), "another process on the same --out is training"));
  CHECK(!fs::exists(dir / "points" / "lora_r2_lr3e-02_s3.json"));
  held.reset();  // released: the rerun trains it
  ToyTask again(o);
  const auto second = sweep::run_sweep(o, again, quiet(sink));
  CHECK(second.ran == 1);
  CHECK(second.complete);
  cleanup(dir);
}

TEST_CASE("sweep: a truncated point file stops the sweep, named, and is kept as it is", "[sweep]") {
  const auto dir = temp_dir("truncated");
  const auto o = toy_options(dir, {"--lrs", "3e-3", "3e-2", "--ranks", "2"});
  std::ostringstream sink;
  ToyTask task(o);
  sweep::run_sweep(o, task, quiet(sink));
  const auto file = dir / "points" / "lora_r2_lr3e-02_s3.json";
  const auto text = lora_test::read_text(file);
  std::ofstream(file, std::ios::trunc) << text.substr(0, text.size() / 2);
  ToyTask again(o);
  const auto e = error_of<examples::FileError>([&] { sweep::run_sweep(o, again, quiet(sink)); });
  CHECK(contains(e, file.string()));
  CHECK(contains(e, "not a valid point file"));
  CHECK(again.runs == 0);
  CHECK(lora_test::read_text(file) == text.substr(0, text.size() / 2));  // not overwritten
  cleanup(dir);
}

TEST_CASE("sweep: an --out that cannot be written stops the sweep before training", "[sweep]") {
  if (::geteuid() == 0) {
    // root writes through permission bits: use a path below a regular file instead.
    const auto dir = temp_dir("unwritable");
    std::ofstream(dir / "file") << "x";
    const auto o = toy_options(dir / "file" / "out", {"--lrs", "3e-3", "--ranks", "2"});
    std::ostringstream sink;
    ToyTask task(o);
    CHECK(!error_of<std::exception>([&] { sweep::run_sweep(o, task, quiet(sink)); }).empty());
    CHECK(task.runs == 0);
    cleanup(dir);
    return;
  }
  const auto dir = temp_dir("readonly");
  fs::create_directories(dir / "points");
  fs::permissions(dir / "points", fs::perms::owner_read | fs::perms::owner_exec);
  const auto o = toy_options(dir, {"--lrs", "3e-3", "--ranks", "2"});
  std::ostringstream sink;
  ToyTask task(o);
  const auto e = error_of<examples::FileError>([&] { sweep::run_sweep(o, task, quiet(sink)); });
  CHECK(contains(e, "cannot create"));
  CHECK(task.runs == 0);
  fs::permissions(dir / "points", fs::perms::owner_all);
  cleanup(dir);
}

TEST_CASE("sweep: a point file whose seed is out of range is refused, not read", "[sweep]") {
  const auto dir = temp_dir("badseed");
  const auto o = toy_options(dir, {"--lrs", "3e-3", "--ranks", "2"});
  std::ostringstream sink;
  ToyTask task(o);
  sweep::run_sweep(o, task, quiet(sink));
  auto doc = load(dir / "points" / "lora_r2_lr3e-03_s3.json");
  for (const auto& bad : {json(-3), json(3.5), json("3")}) {
    doc["settings"]["seed"] = bad;
    INFO(bad.dump());
    CHECK(contains(error_of<examples::DataError>([&] { sweep::record_from_json(doc, "test_acc"); }), "settings.seed"));
  }
  doc["settings"]["seed"] = 3;
  CHECK(sweep::record_from_json(doc, "test_acc").seed == 3);
  cleanup(dir);
}

TEST_CASE("sweep: --alphas gives a column per alpha, a scale plot and the fitted optima in every output", "[sweep]") {
  const auto dir = temp_dir("alphas");
  const auto o = toy_options(dir, {"--ranks", "2", "--alphas", "1", "4", "--lrs", "1e-2", "3e-2", "1e-1", "3e-1",
                                   "--full-lrs", "1e-2", "1e-1", "--seeds", "3", "4"});
  std::ostringstream sink;
  ToyTask task(o);
  const auto out = sweep::run_sweep(o, task, quiet(sink));
  INFO(sink.str());
  REQUIRE(out.ran == 20);
  const auto r = load(dir / "results.json");
  CHECK(r.at("columns") == json::array({"full", "lora_r2_a1", "lora_r2_a4"}));
  // Every point file says whether it collapsed, by the task's rule (the toy's: only divergence).
  const auto p = load(dir / "points" / "lora_r2_a4_lr1e-01_s3.json");
  CHECK(p.at("column") == "lora_r2_a4");
  CHECK(p.at("settings").at("alpha") == 4.0);
  CHECK(p.at("results").at("collapsed") == false);
  CHECK(r.at("runs").at("lora_r2_a4").at("0.1").at("n_collapsed") == 0);

  // The pooled fit in results.json is the fit of that column's runs as results.json lists them.
  const auto& robust = r.at("robust").at("test_acc");
  for (const std::string col : {"full", "lora_r2_a1", "lora_r2_a4"}) {
    std::vector<sweep::RunValue> runs;
    for (const auto& [lr, rec] : r.at("runs").at(col).items())
      for (const auto& [seed, s] : rec.at("seeds").items())
        runs.push_back({std::stod(lr), s.at("test_acc").get<double>(), std::stoull(seed), false});
    const auto f = sweep::fit_optimum(runs, true, false);
    INFO(col);
    CHECK(robust.at("columns").at(col).at("pooled").at("lr").get<double>() == Approx(f.lr).epsilon(1e-12));
    CHECK(robust.at("columns").at(col).at("scale").get<double>() == (col == "full" ? 0.0 : col == "lora_r2_a1" ? 0.5 : 2.0));
  }
  // Two scales at one rank: the slope of each seed's optimum against the scale, and its plot.
  CHECK(robust.at("scales") == 2);
  CHECK(robust.at("optimum_slope_vs_scale").at("n") == 4);
  const auto svg = lora_test::read_text(dir / "scale.svg");
  std::string problem;
  CHECK(tags_balanced(svg, problem));
  CHECK(count_of(svg, "class=\"slope\"") >= 1);
  const auto summary = lora_test::read_text(dir / "summary.md");
  CHECK(contains(summary, "| r2 a1 |"));
  CHECK(contains(summary, "Against the scale s (2 scales"));
  CHECK(contains(summary, "| r2 a4 / r2 a1 |"));
  cleanup(dir);
}

TEST_CASE("sweep: --pack trains LoRA points of a seed in one pass, each as it trains alone", "[sweep][pack]") {
  // The toy model draws no random numbers in training (no dropout), so a packed point must
  // give what the same point gives alone, up to float rounding (the routed batched product
  // and a per-row loss sum in another order). One LR diverges: it stops, the others go on.
  const std::vector<std::string> grid = {"--lrs", "3e-3", "3e-2", "1e30", "--ranks", "2", "4", "--full-finetune",
                                         "--seeds", "3", "4"};
  const auto alone_dir = temp_dir("pack-alone"), packed_dir = temp_dir("pack-packed");
  std::ostringstream sink;
  const auto alone_o = toy_options(alone_dir, grid);
  ToyTask alone_task(alone_o);
  REQUIRE(sweep::run_sweep(alone_o, alone_task, quiet(sink)).ran == 18);
  auto more = grid;
  more.insert(more.end(), {"--pack", "4"});
  const auto packed_o = toy_options(packed_dir, more);
  ToyTask packed_task(packed_o);
  const auto out = sweep::run_sweep(packed_o, packed_task, quiet(sink));
  INFO(sink.str());
  CHECK(out.ran == 18);
  CHECK(out.diverged == 6);  // LoRA r2, r4 and FullFT at 1e30, two seeds
  CHECK(out.complete);
  // Per seed: 3 FullFT points alone, 6 LoRA points in packs of 4 and 2.
  CHECK(packed_task.runs == 2 * (3 + 2));

  double max_diff = 0;
  size_t packed = 0;
  std::map<size_t, size_t> packs_of;  // pack size -> points
  for (const auto& f : files_in(alone_dir / "points")) {
    const auto a = load(f), p = load(packed_dir / "points" / f.filename());
    INFO(f.filename().string());
    CHECK(p.at("settings") == a.at("settings"));  // a packed point passes as the same point
    const auto& with = p.at("environment").value("packed_with", json::array());
    if (a.at("settings").at("method") == "full") {
      CHECK(with.empty());
      CHECK(without_environment(p) == without_environment(a));  // FullFT runs alone, bit for bit
      continue;
    }
    ++packed;
    packs_of[with.size() + 1] += 1;
    CHECK(std::find(with.begin(), with.end(), a.at("key")) == with.end());
    const auto& ra = a.at("results");
    const auto& rp = p.at("results");
    CHECK(rp.at("diverged") == ra.at("diverged"));
    CHECK(rp.at("steps") == ra.at("steps"));
    CHECK(rp.at("trainable_parameters") == ra.at("trainable_parameters"));
    if (ra.at("diverged").get<bool>()) continue;
    for (const char* k : {"train_losses", "val_losses"})
      for (size_t e = 0; e < ra.at(k).size(); ++e)
        max_diff = std::max(max_diff, std::abs(ra.at(k)[e].get<double>() - rp.at(k)[e].get<double>()));
    const auto& ca = ra.at("train_curve").at("loss");
    const auto& cp = rp.at("train_curve").at("loss");
    REQUIRE(ca.size() == cp.size());
    for (size_t i = 0; i < ca.size(); ++i) max_diff = std::max(max_diff, std::abs(ca[i].get<double>() - cp[i].get<double>()));
    CHECK(std::abs(rp.at("test_acc").get<double>() - ra.at("test_acc").get<double>()) <= 100.0 / 64 + 1e-9);  // one example at most
  }
  std::cout << "packed vs alone: " << packed << " LoRA points, max |loss diff| " << max_diff << "\n";
  CHECK(packed == 12);
  CHECK(packs_of == std::map<size_t, size_t>{{2, 4}, {4, 8}});  // per seed: r2 x 3 LRs + r4 at 3e-3, then r4's other two
  CHECK(max_diff < 1e-5);
  cleanup(alone_dir);
  cleanup(packed_dir);
}

TEST_CASE("sweep: --pack with --jobs 2 trains every point once, and --pack refuses --dora", "[sweep][pack]") {
  const auto dir = temp_dir("pack-jobs");
  const auto o = toy_options(dir, {"--lrs", "3e-3", "3e-2", "--ranks", "2", "4", "--pack", "2", "--jobs", "2"});
  std::ostringstream sink;
  ToyTask task(o);
  const auto out = sweep::run_sweep(o, task, quiet(sink));
  INFO(sink.str());
  CHECK(out.ran == 4);
  CHECK(out.complete);
  CHECK(files_in(dir / "points").size() == 4);
  for (const auto& f : files_in(dir / "points")) CHECK(load(f).at("environment").at("packed_with").size() == 1);
  CHECK(contains(error_of<examples::UsageError>([&] { toy_options(dir, {"--pack", "2", "--dora"}); }), "--dora"));
  cleanup(dir);
}

// Serving-time adapters (lora/routing.hpp, ModelAdapter::set_scale): rows of one batch routed
// to different adapters in one pass, compared with each row run alone with only its adapter
// active (max differences printed); the errors that keep anything from running half-routed;
// routing from two threads at once; gradients through a routed batch; scales changed at run time.
#include <lora/lora.hpp>
#include <lora/routing.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using lora_test::contains;
using lora_test::error_of;

/// A model with every drop-in kind on the row path: ids (N, T) -> Embedding -> Linear -> a
/// Conv1d over T -> Linear -> (N, T, 5).
struct NetImpl : torch::nn::Module {
  NetImpl() {
    emb = register_module("emb", lora::Embedding(40, 12));
    proj = register_module("proj", lora::Linear(12, 10));
    conv = register_module("conv", lora::Conv1d(torch::nn::Conv1dOptions(10, 8, 3).padding(1)));
    head = register_module("head", lora::Linear(8, 5));
  }
  torch::Tensor forward(const torch::Tensor& ids) {
    auto h = torch::relu(proj->forward(emb->forward(ids)));      // (N, T, 10)
    h = torch::relu(conv->forward(h.transpose(1, 2)));           // (N, 8, T)
    return head->forward(h.transpose(1, 2));                     // (N, T, 5)
  }
  lora::Embedding emb{nullptr};
  lora::Linear proj{nullptr};
  lora::Conv1d conv{nullptr};
  lora::Linear head{nullptr};
};
TORCH_MODULE(Net);

/// Adapter `name` of rank `r` on `targets`, with B made non-zero so that it changes the output.
lora::ModelAdapter add(Net& net, const std::string& name, int64_t r, std::vector<std::string> targets, double alpha = 8) {
  lora::Config c;
  c.adapter_name = name, c.rank = r, c.alpha = alpha, c.targets = std::move(targets), c.seed = r;
  c.allow_rank_above_min = true;  // rank 8 on the 8 -> 5 head
  c.init = lora::init::gaussian_gaussian(0.3);
  auto h = lora::inject(*net, c);
  return h;
}

/// Three adapters of ranks 2, 4 and 8; "b" only on proj and head, so rows routed to "b" get the
/// base output of emb and conv.
struct Served {
  Net net;
  std::vector<lora::ModelAdapter> handles;
  torch::Tensor ids;
  Served() {
    torch::manual_seed(3);
    net->to(torch::kDouble);
    net->eval();
    handles.push_back(add(net, "a", 2, {"emb", "proj", "conv", "head"}));
    handles.push_back(add(net, "b", 4, {"proj", "head"}));
    handles.push_back(add(net, "c", 8, {"emb", "proj", "conv", "head"}, 32));
    ids = torch::randint(40, {6, 7}, torch::kLong);
  }
  /// Row b alone, with only adapter `name` active on each layer that has it (none elsewhere,
  /// none at all for the base).
  torch::Tensor alone(int64_t b, const std::string& name) {
    torch::NoGradGuard g;
    only(name);
    auto y = net->forward(ids.narrow(0, b, 1));
    only_all();
    return y;
  }
  void only(const std::string& name) {
    for (auto& m : net->modules(/*include_self=*/false))
      if (auto* host = dynamic_cast<lora::detail::AdapterHost*>(m.get()))
        host->set_active_adapters(host->has_adapter(name) ? std::vector<std::string>{name} : std::vector<std::string>{});
  }
  void only_all() {
    for (auto& m : net->modules(/*include_self=*/false))
      if (auto* host = dynamic_cast<lora::detail::AdapterHost*>(m.get())) host->set_active_adapters(host->adapter_names());
  }
};

const std::vector<std::string> kRows = {"a", lora::kBaseOnly, "b", "c", "a", "b"};
/// The same adapters with each one's rows together: the layers take one branch per group on
/// slices of the batch instead of the gathered computation (detail/adapter_host.hpp add_routed).
const std::vector<std::string> kGrouped = {"a", "a", lora::kBaseOnly, "b", "b", "c"};
/// Groups of one size: Linear and Embedding layers compute each group as one row of the
/// gathered computation (the conv layer, one branch per group).
const std::vector<std::string> kEqual = {"c", "c", "a", "a", lora::kBaseOnly, lora::kBaseOnly};

/// The rows of `rows` that use adapter `name`.
torch::Tensor rows_of(const std::vector<std::string>& rows, const std::string& name) {
  std::vector<int64_t> out;
  for (size_t b = 0; b < rows.size(); ++b)
    if (rows[b] == name) out.push_back(static_cast<int64_t>(b));
  return torch::tensor(out, torch::kLong);
}

}  // namespace

TEST_CASE("routing: each row through its own adapter in one pass equals each row run alone", "[serving][routing]") {
  Served s;
  torch::Tensor routed;
  {
    torch::NoGradGuard g;
    lora::RowRouting route(*s.net, kRows);
    CHECK(route.rows() == kRows.size());
    routed = s.net->forward(s.ids);  // (6, 7, 5)
  }
  for (size_t b = 0; b < kRows.size(); ++b)
    CHECK(lora_test::allclose(routed.narrow(0, b, 1), s.alone(b, kRows[b]), 1e-12, 1e-12,
                              "row " + std::to_string(b) + " ('" + kRows[b] + "') routed vs alone"));
  for (const auto& rows : {kGrouped, kEqual}) {
    torch::Tensor grouped;
    {
      torch::NoGradGuard g;
      lora::RowRouting route(*s.net, rows);
      grouped = s.net->forward(s.ids);
    }
    for (size_t b = 0; b < rows.size(); ++b)
      CHECK(lora_test::allclose(grouped.narrow(0, b, 1), s.alone(b, rows[b]), 1e-12, 1e-12,
                                "row " + std::to_string(b) + " ('" + rows[b] + "') routed in groups" +
                                    (rows == kEqual ? " of one size" : "") + " vs alone"));
  }
  // The base row is exactly the base model's output for the same batch (the zero slot adds
  // exact zeros), and the rows really differ (the test can fail).
  torch::NoGradGuard g;
  s.only(lora::kBaseOnly);
  const auto base = s.net->forward(s.ids);
  s.only_all();
  CHECK(torch::equal(routed[1], base[1]));
  CHECK((routed[0] - base[0]).abs().max().item<double>() > 1e-3);
  // Every row on one adapter: each layer takes its ordinary (fused) path with that adapter, so
  // the batch equals the forward with only that adapter active, bit for bit.
  torch::Tensor routed_c;
  {
    lora::RowRouting all_c(*s.net, std::vector<std::string>(kRows.size(), "c"));
    routed_c = s.net->forward(s.ids);
  }
  s.only("c");
  CHECK(torch::equal(routed_c, s.net->forward(s.ids)));
  s.only_all();
  // After the scope, the layers' active adapters apply again to every row.
  const auto all = s.net->forward(s.ids);
  CHECK((all[1] - routed[1]).abs().max().item<double>() > 1e-3);
}

TEST_CASE("routing: the stacked adapters a layer keeps between passes follow every change", "[serving][routing]") {
  // Without gradients a layer reuses its stack of the routed adapters; an in-place write (a
  // training step, a hot swap), a scale change, or an adapter removed and added again under
  // the same name must each show in the next routed pass, as in a layer that restacks.
  Served s;
  torch::NoGradGuard g;
  const auto routed = [&] {
    lora::RowRouting route(*s.net, kRows);
    return s.net->forward(s.ids);
  };
  const auto check_rows = [&](const std::string& what) {
    const auto y = routed();
    double worst = 0;
    for (size_t b = 0; b < kRows.size(); ++b)
      worst = std::max(worst, (y.narrow(0, b, 1) - s.alone(b, kRows[b])).abs().max().item<double>());
    INFO(what << ": max |routed - alone| " << worst);
    CHECK(worst < 1e-12);
    return y;
  };
  const auto first = check_rows("first pass");
  CHECK(torch::equal(routed(), first));  // the kept stack gives the same bits
  s.net->proj->adapter("a").B.add_(0.5);  // in place, as an optimizer step or a hot swap
  CHECK((check_rows("after an in-place write to a's B")[0] - first[0]).abs().max().item<double>() > 1e-3);
  s.handles[2].set_scale(0.25);  // "c"
  check_rows("after c's scale changed");
  s.handles[1].remove();  // "b", then a new "b" of another rank and init
  s.handles[1] = add(s.net, "b", 3, {"proj", "head"}, 6);
  check_rows("after b was removed and added again");
  // Module::to() swaps the adapters' storage in place: the next pass restacks in float.
  s.net->to(torch::kFloat);
  const auto y = routed();
  CHECK(y.scalar_type() == torch::kFloat);
  double worst = 0;
  for (size_t b = 0; b < kRows.size(); ++b)
    worst = std::max(worst, (y.narrow(0, b, 1) - s.alone(b, kRows[b])).abs().max().item<double>());
  INFO("in float: max |routed - alone| " << worst);
  CHECK(worst < 1e-5);
}

TEST_CASE("routing: gradients of a routed batch reach each row's adapter as if its rows ran alone", "[serving][routing]") {
  Served s;
  s.net->train();
  // Each inject() froze everything but its own adapter: make all three trainable again.
  for (auto& h : s.handles)
    for (auto& p : h.parameters()) p.set_requires_grad(true);
  const auto& a = s.net->proj->adapter("a");
  const auto& c = s.net->proj->adapter("c");
  for (const auto& rows : {kRows, kGrouped, kEqual}) {  // per row, per group, per group of one size
    const std::string order = rows == kRows ? "interleaved rows" : rows == kGrouped ? "grouped rows" : "equal groups";
    for (auto& p : s.net->parameters()) p.mutable_grad() = torch::Tensor();
    {
      lora::RowRouting route(*s.net, rows);
      s.net->forward(s.ids).pow(2).sum().backward();
    }
    const auto gA = a.A.grad().clone(), gC = c.B.grad().clone();
    for (auto& p : s.net->parameters()) p.mutable_grad() = torch::Tensor();
    // The rows of "a" with "a" only, those of "c" with "c" only.
    s.only("a");
    s.net->forward(s.ids.index_select(0, rows_of(rows, "a"))).pow(2).sum().backward();
    s.only("c");
    s.net->forward(s.ids.index_select(0, rows_of(rows, "c"))).pow(2).sum().backward();
    s.only_all();
    CHECK(lora_test::allclose(gA, a.A.grad(), 1e-10, 1e-12, "dA of 'a': routed vs its rows alone, " + order));
    CHECK(lora_test::allclose(gC, c.B.grad(), 1e-10, 1e-12, "dB of 'c': routed vs its rows alone, " + order));
    CHECK(gA.abs().max().item<double>() > 0);
  }
}

TEST_CASE("routing: every refusal says why and computes nothing", "[serving][routing]") {
  Served s;
  // An unknown name: the message names the known adapters; no scope, so nothing is routed.
  auto msg = error_of<lora::ConfigError>([&] { lora::RowRouting r(*s.net, {"a", "nope"}); });
  CHECK(contains(msg, "'nope'"));
  CHECK(contains(msg, "'a', 'b', 'c'"));
  CHECK(lora::detail::current_routing() == nullptr);
  CHECK(contains(error_of<lora::ConfigError>([&] { lora::RowRouting r(*s.net, {}); }), "no rows"));
  // A batch whose first dimension is not the number of rows.
  {
    lora::RowRouting r(*s.net, {"a", "b"});
    CHECK(contains(error_of<lora::ShapeError>([&] { s.net->forward(s.ids); }), "routes 2 rows"));
  }
  // A merged adapter is in the weight every row shares.
  s.handles[0].merge();
  CHECK(contains(error_of<lora::ConfigError>([&] { lora::RowRouting r(*s.net, kRows); }), "Unmerge it first"));
  s.handles[0].unmerge();
  // Disabled adapters.
  s.handles[1].disable();
  CHECK(contains(error_of<lora::ConfigError>([&] { lora::RowRouting r(*s.net, kRows); }), "disabled"));
  s.handles[1].enable();
  // A plain torch::nn layer carrying adapters: its re-parametrized weight is shared by all rows.
  torch::nn::Sequential plain(torch::nn::Linear(4, 3));
  lora::Config c;
  c.rank = 2;
  lora::inject(*plain, c);
  msg = error_of<lora::ConfigError>([&] { lora::RowRouting r(*plain, {"default"}); });
  CHECK(contains(msg, "plain torch::nn::Linear"));
  CHECK(contains(msg, "lora::Linear"));
  // DoRA rescales the whole base output.
  lora::Linear l(4, 3);
  lora::LayerAdapterSpec d;
  d.rank = 2, d.use_dora = true;
  l->add_adapter("dora", d);
  torch::nn::Sequential m(l);
  CHECK(contains(error_of<lora::ConfigError>([&] { lora::RowRouting r(*m, {"dora"}); }), "DoRA"));
  CHECK(lora::detail::current_routing() == nullptr);
}

TEST_CASE("routing: two threads routing differently at the same time each get their own rows", "[serving][routing]") {
  Served s;
  const std::vector<std::string> other = {"c", "c", lora::kBaseOnly, "a", "b", "a"};
  torch::Tensor want1, want2;
  {
    torch::NoGradGuard g;
    lora::RowRouting r1(*s.net, kRows);
    want1 = s.net->forward(s.ids);
  }
  {
    torch::NoGradGuard g;
    lora::RowRouting r2(*s.net, other);
    want2 = s.net->forward(s.ids);
  }
  REQUIRE((want1 - want2).abs().max().item<double>() > 1e-3);
  std::atomic<int> wrong{0}, done{0};
  auto serve = [&](const std::vector<std::string>& rows, const torch::Tensor& want) {
    torch::NoGradGuard g;
    for (int i = 0; i < 50; ++i) {
      lora::RowRouting r(*s.net, rows);
      if (!torch::equal(s.net->forward(s.ids), want)) ++wrong;
      ++done;
    }
  };
  std::thread t1(serve, kRows, want1), t2(serve, other, want2);
  t1.join();
  t2.join();
  INFO("forward passes whose output was not their own routing's: " << wrong.load() << " of " << done.load());
  CHECK(done == 100);
  CHECK(wrong == 0);
}

TEST_CASE("scale at run time: set, multiply, restore, 0 gives the base exactly, on both paths, saved as is", "[serving][scale]") {
  torch::manual_seed(5);
  // One drop-in layer and one plain torch::nn::Linear (re-parametrized) in one model.
  torch::nn::Sequential m(lora::Linear(6, 5), torch::nn::Linear(5, 4));
  m->to(torch::kDouble);
  lora::Config c;
  c.rank = 2, c.alpha = 4, c.init = lora::init::gaussian_gaussian(0.5);
  auto h = lora::inject(*m, c);
  const auto x = torch::randn({3, 6}, torch::kDouble);
  torch::NoGradGuard g;
  const auto y1 = m->forward(x);
  h.scale_by(0);
  h.disable();
  const auto base = m->forward(x);
  h.enable();
  CHECK(torch::equal(m->forward(x), base));  // scale 0: exactly the base output
  CHECK((y1 - base).abs().max().item<double>() > 1e-3);
  h.restore_scale();
  CHECK(lora_test::allclose(m->forward(x), y1, 0, 0, "restore_scale() gives the original output"));
  for (const auto& l : h.layers()) CHECK(l.scale == 2.0);
  h.set_scale(5);
  for (const auto& l : h.layers()) CHECK(l.scale == 5.0);
  CHECK(m[0]->as<lora::Linear>()->adapter("default").scale == 5.0);
  CHECK(m[0]->as<lora::Linear>()->adapter("default").configured_scale() == 2.0);
  const auto y5 = m->forward(x);
  // Saved at scale 5, reloaded into a fresh copy of the base: the same output.
  const auto dir = lora_test::temp_dir("scale_save");
  lora::peft::save(h, dir.string());
  torch::nn::Sequential fresh(lora::Linear(6, 5), torch::nn::Linear(5, 4));
  fresh->to(torch::kDouble);
  h.disable();
  for (size_t i = 0; i < 2; ++i) {
    fresh[i]->named_parameters()["weight"].copy_(m[i]->named_parameters(false)["weight"]);
    fresh[i]->named_parameters()["bias"].copy_(m[i]->named_parameters(false)["bias"]);
  }
  h.enable();
  const auto reloaded = lora::peft::load(*fresh, dir.string());
  for (const auto& l : reloaded.layers()) CHECK(l.scale == Approx(5.0));  // the file says s = 5 (alpha_pattern)
  CHECK(lora_test::allclose(fresh->forward(x), y5, 1e-12, 1e-12, "saved at scale 5 and reloaded"));
  // Merged: the scale is in the weight, refused with nothing changed.
  h.merge();
  CHECK(contains(error_of<lora::ConfigError>([&] { h.set_scale(1); }), "unmerge"));
  CHECK(h.layers()[0].scale == 5.0);
  h.unmerge();
  CHECK(contains(error_of<lora::ConfigError>([&] { h.set_scale(NAN); }), "not finite"));
}

namespace {
/// Losses of a few AdamW steps of LoRA (every Linear, one a plain torch::nn::Linear) on a fixed
/// regression, with the base in `base` dtype. `adapter_dtype` receives the adapters' dtype.
std::vector<double> train_in(torch::Dtype base, bool autocast, torch::Dtype* adapter_dtype, int steps = 60) {
  torch::manual_seed(0);
  torch::nn::Sequential m(lora::Linear(32, 32), torch::nn::ReLU(), torch::nn::Linear(32, 4));
  m->to(base);
  lora::Config c;
  c.rank = 4, c.alpha = 8, c.adapt_output_head = true, c.autocast_adapter_dtype = autocast;
  c.init = lora::init::gaussian_zero();
  auto h = lora::inject(*m, c);
  *adapter_dtype = h.parameters().front().scalar_type();
  const auto x = torch::randn({64, 32}), y = torch::randn({64, 4});
  torch::optim::AdamW opt(h.parameters(), torch::optim::AdamWOptions(1e-2));
  std::vector<double> losses;
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    const auto loss = torch::mse_loss(m->forward(x.to(base)).to(torch::kFloat), y);
    loss.backward();
    h.step(opt);
    losses.push_back(loss.item<double>());
  }
  return losses;
}
}  // namespace

TEST_CASE("adapter dtype: float32 adapters on a bfloat16 base train like the float32 run", "[serving][dtype]") {
  torch::Dtype d32, dbf, dkeep;
  const auto l32 = train_in(torch::kFloat, true, &d32);
  const auto lbf = train_in(torch::kBFloat16, true, &dbf);
  CHECK(d32 == torch::kFloat);
  CHECK(dbf == torch::kFloat);  // autocast: float32 adapters on the bfloat16 base
  train_in(torch::kBFloat16, false, &dkeep, 1);
  CHECK(dkeep == torch::kBFloat16);  // autocast off: the base's dtype
  std::cout << "  loss float32: " << l32.front() << " -> " << l32.back() << "; bfloat16 base, float32 adapters: "
            << lbf.front() << " -> " << lbf.back() << "\n";
  CHECK(lbf.back() < 0.8 * lbf.front());  // it trains
  // Stated tolerance: the final losses differ by at most 5% of the starting loss (the bfloat16
  // base itself is the float32 base rounded to 8 bits of mantissa).
  CHECK(std::abs(lbf.back() - l32.back()) <= 0.05 * l32.front());
}

TEST_CASE("adapter dtype: merges in float32 round once, and save writes the dtype asked for", "[serving][dtype]") {
  torch::manual_seed(1);
  torch::nn::Sequential m(lora::Linear(16, 8), torch::nn::Linear(8, 6));
  m->to(torch::kBFloat16);
  lora::Config c;
  c.rank = 4, c.alpha = 8, c.adapt_output_head = true, c.init = lora::init::gaussian_gaussian(0.2);
  auto h = lora::inject(*m, c);
  const auto x = torch::randn({5, 16}).to(torch::kBFloat16);
  torch::NoGradGuard g;
  const auto y = m->forward(x);
  CHECK(y.scalar_type() == torch::kBFloat16);
  // The merged weight is W + s B A computed in float32 and rounded once to bfloat16.
  auto& lin = *m[0]->as<lora::Linear>();
  const auto& a = lin.adapter("default");
  const auto want = (lin.weight.to(torch::kFloat) + a.delta_weight()).to(torch::kBFloat16);
  h.merge();
  CHECK(torch::equal(lin.weight, want));
  CHECK(lora_test::allclose(m->forward(x), y, 0.02, 0.02, "merged vs unmerged, bfloat16 base"));
  h.unmerge();
  const auto dir = lora_test::temp_dir("dtype_save");
  lora::peft::SaveOptions o;
  o.dtype = torch::kBFloat16;
  lora::peft::save(h, dir.string(), o);
  const lora::safetensors::File f((dir / lora::peft::kWeightsFile).string());
  for (const auto& t : f.tensors()) CHECK(t.dtype == "BF16");
  lora::peft::save(h, dir.string());
  const lora::safetensors::File f32((dir / lora::peft::kWeightsFile).string());
  for (const auto& t : f32.tensors()) CHECK(t.dtype == "F32");
}

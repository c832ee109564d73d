// Combining adapters (lora/combine.hpp: add_weighted_adapter, methods cat, linear, svd) and
// loading a PEFT folder into an existing adapter in place (lora/peft_hot_swap.hpp: hot_swap).
// The references are computed here from the sources' stored A and B (as matrices: A (r, -1),
// B (out, -1)) and the layers' weights, never by the library's helpers; max differences printed.
// One small model holds every layer kind: lora::Embedding (with a padding row), lora::Linear,
// lora::Conv2d, a plain torch::nn::Linear and a torch::nn::MultiheadAttention (its q / v slices
// for combining, in_proj and out_proj for PEFT folders).
#include <lora/lora.hpp>

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using lora_test::contains;
using lora_test::error_of;

struct MixImpl : torch::nn::Module {
  explicit MixImpl(int64_t d = 8) : d(d) {
    emb = register_module("emb", lora::Embedding(torch::nn::EmbeddingOptions(20, d).padding_idx(0)));
    lin = register_module("lin", lora::Linear(d, d));
    conv = register_module("conv", lora::Conv2d(torch::nn::Conv2dOptions(d, 6, {3, 1}).padding({1, 0})));
    plain = register_module("plain", torch::nn::Linear(6, d));
    attn = register_module("attn", torch::nn::MultiheadAttention(torch::nn::MultiheadAttentionOptions(d, 2)));
  }
  torch::Tensor forward(const torch::Tensor& ids) {                  // (N, T)
    auto h = torch::relu(lin->forward(emb->forward(ids)));           // (N, T, d)
    h = torch::relu(conv->forward(h.transpose(1, 2).unsqueeze(3)));  // (N, 6, T, 1)
    h = plain->forward(h.squeeze(3).transpose(1, 2));                // (N, T, d)
    const auto x = h.transpose(0, 1);                                // (T, N, d)
    return std::get<0>(attn->forward(x, x, x)).transpose(0, 1);      // (N, T, d)
  }
  int64_t d;
  lora::Embedding emb{nullptr};
  lora::Linear lin{nullptr};
  lora::Conv2d conv{nullptr};
  torch::nn::Linear plain{nullptr};
  torch::nn::MultiheadAttention attn{nullptr};
};
TORCH_MODULE(Mix);

/// The same base weights every time (float64, eval mode).
Mix make(int64_t d = 8) {
  torch::manual_seed(11);
  Mix m(d);
  m->to(torch::kDouble);
  m->eval();
  return m;
}

torch::Tensor ids() { return torch::tensor({{1, 0, 5, 19, 3}, {7, 7, 0, 2, 11}, {4, 9, 13, 0, 1}}, torch::kLong); }

const std::vector<std::string> kAll = {"emb", "lin", "conv", "plain", "attn.in_proj.q", "attn.in_proj.v"};
/// PEFT's layout for an attention: "attn" adapts in_proj (whole) and out_proj.
const std::vector<std::string> kSwap = {"emb", "lin", "conv", "plain", "attn"};

lora::ModelAdapter add(Mix& m, const std::string& name, int64_t r, double alpha, uint64_t seed,
                       std::vector<std::string> targets) {
  lora::Config c;
  c.adapter_name = name, c.rank = r, c.alpha = alpha, c.seed = seed, c.targets = std::move(targets);
  c.init = lora::init::gaussian_gaussian(0.3);  // A and B both non-zero
  c.allow_rank_above_min = true;
  return lora::inject(*m, c);
}

torch::Tensor matrix(const torch::Tensor& t) { return t.detach().reshape({t.size(0), -1}); }

/// Adapter `name` on layer `path`, or null.
const lora::LayerAdapter* find(Mix& m, const std::string& path, const std::string& name) {
  for (const auto& l : lora::detail::layers_of(*m))
    if (l.path == path && l.has_adapter(name)) return &l.adapter(name);
  return nullptr;
}

/// s B A as a matrix, from the stored tensors.
torch::Tensor delta_of(const lora::LayerAdapter& a) { return matrix(a.B).mm(matrix(a.A)) * a.scale; }

/// sum_i w_i s_i B_i A_i over the sources layer `path` carries (undefined if none).
torch::Tensor reference(Mix& m, const std::string& path, const std::vector<std::pair<std::string, double>>& sources) {
  torch::Tensor ref;
  for (const auto& [name, w] : sources)
    if (const auto* a = find(m, path, name)) ref = ref.defined() ? ref + w * delta_of(*a) : w * delta_of(*a);
  return ref;
}

/// The matrix view of the weight `W` of layer `path` of a Mix (written out here, per kind).
torch::Tensor view_of(const std::string& path, const torch::Tensor& W, int64_t E) {
  if (path == "emb") return W.t();
  if (path == "conv") return W.reshape({W.size(0), -1});
  if (path == "attn.in_proj.q") return W.narrow(0, 0, E);
  if (path == "attn.in_proj.k") return W.narrow(0, E, E);
  if (path == "attn.in_proj.v") return W.narrow(0, 2 * E, E);
  return W;  // lin, plain, attn.in_proj, attn.out_proj
}
/// The registered (base) weight of layer `path`.
torch::Tensor weight_of(Mix& m, const std::string& path) {
  if (path == "emb") return m->emb->weight;
  if (path == "lin") return m->lin->weight;
  if (path == "conv") return m->conv->weight;
  if (path == "plain") return m->plain->named_parameters(false)["weight"];
  return m->attn->named_parameters(false)["in_proj_weight"];
}

/// The output with exactly `names` active (each on the layers that carry it).
torch::Tensor output_with(Mix& m, const std::vector<std::string>& names) {
  torch::NoGradGuard g;
  lora::set_active_adapters(*m, names);
  return m->forward(ids());
}

/// Every layer's adapter names: what a refused call must leave as it was.
std::map<std::string, std::vector<std::string>> names_per_layer(Mix& m) {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& l : lora::detail::layers_of(*m)) out[l.path] = l.adapter_names();
  return out;
}

/// Checks every layer of `combined`: its delta (from its stored A, B, scale) against the
/// reference sum, and the same for what merge() adds to the weight.
void check_exact(Mix& m, const lora::ModelAdapter& combined, const std::vector<std::pair<std::string, double>>& sources,
                 double tol) {
  for (const auto& l : combined.layers()) {
    const auto* a = find(m, l.path, combined.name());
    REQUIRE(a);
    CHECK(a->scale == 1.0);
    const auto ref = reference(m, l.path, sources);
    CHECK(lora_test::allclose(delta_of(*a), ref, tol, tol, combined.name() + " on " + l.path + ": delta vs sum w_i s_i B_i A_i"));
  }
  // What merge() adds to each weight, in the weight's own layout read through the view.
  std::map<std::string, torch::Tensor> before;
  for (const auto& l : combined.layers()) before[l.path] = weight_of(m, l.path).detach().clone();
  combined.merge();
  for (const auto& l : combined.layers()) {
    const auto added = view_of(l.path, weight_of(m, l.path).detach() - before[l.path], m->d);
    CHECK(lora_test::allclose(added, reference(m, l.path, sources), tol, tol,
                              combined.name() + " on " + l.path + ": merged delta W vs sum w_i s_i B_i A_i"));
  }
  combined.unmerge();
}

}  // namespace

TEST_CASE("combine: cat is exact on every layer kind, in forward, merge and a PEFT round trip", "[combine]") {
  auto m = make();
  add(m, "a", 2, 4, 1, kAll);
  add(m, "b", 5, 6, 2, kAll);
  const std::vector<std::pair<std::string, double>> w = {{"a", 0.7}, {"b", -0.4}};
  const auto y_a = output_with(m, {"a"});
  auto ab = lora::add_weighted_adapter(m, w, "ab");  // cat is the default
  REQUIRE(ab.layers().size() == kAll.size());
  for (size_t i = 0; i < kAll.size(); ++i) {
    CHECK(ab.layers()[i].path == kAll[i]);
    CHECK(ab.layers()[i].rank == 7);  // 2 + 5: above min(in_m, out_m) = 6 on conv and plain, allowed
    CHECK(ab.layers()[i].scale == 1.0);
  }
  CHECK(ab.layers()[3].kind == lora::LayerKind::reparametrized);
  CHECK(ab.layers()[4].type == "MultiheadAttention.in_proj.q");
  check_exact(m, ab, w, 1e-12);

  // Forward: the combination alone equals the sources active together at scales w_i s_i
  // (both paths: drop-ins run the branch, plain layers re-parametrize their weight).
  const auto y_ab = output_with(m, {"ab"});
  for (const auto& l : lora::detail::layers_of(*m))
    for (const auto& [name, weight] : w)
      if (l.has_adapter(name)) l.set_scale(name, weight * l.adapter(name).configured_scale());
  const auto y_sources = output_with(m, {"a", "b"});
  CHECK(lora_test::allclose(y_ab, y_sources, 1e-12, 1e-12, "output: 'ab' alone vs 0.7 a + (-0.4) b active"));
  CHECK((y_ab - y_a).abs().max().item<double>() > 1e-3);  // the adapters change the output

  // peft::save writes it (slices as one in_proj adapter) and peft::load gives the same model.
  const auto dir = lora_test::temp_dir("combine_cat");
  lora::peft::save(ab, dir.string());
  auto fresh = make();
  auto loaded = lora::peft::load(*fresh, dir.string());
  torch::NoGradGuard g;
  CHECK(lora_test::allclose(fresh->forward(ids()), y_ab, 1e-12, 1e-12, "output: 'ab' saved and loaded vs 'ab'"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("combine: linear is PEFT's formula, sums of the A's and of the B's", "[combine]") {
  auto m = make();
  add(m, "a", 2, 4, 1, kAll);
  add(m, "d", 2, 3, 3, kAll);
  const std::vector<std::pair<std::string, double>> w = {{"a", 0.6}, {"d", -0.5}};
  lora::CombineOptions o;
  o.method = lora::CombineMethod::linear;
  auto lin = lora::add_weighted_adapter(m, w, "lin", o);
  REQUIRE(lin.layers().size() == kAll.size());
  for (const auto& l : lin.layers()) {
    const auto* a = find(m, l.path, "a");
    const auto* d = find(m, l.path, "d");
    const auto* n = find(m, l.path, "lin");
    CHECK(n->rank == 2);
    CHECK(n->scale == 1.0);
    // PEFT: c_i = w_i s_i; A = sum sign(c_i) sqrt|c_i| A_i, B = sum sqrt|c_i| B_i.
    const double ca = 0.6 * a->scale, cd = -0.5 * d->scale;
    const auto A = std::sqrt(std::abs(ca)) * matrix(a->A) - std::sqrt(std::abs(cd)) * matrix(d->A);
    const auto B = std::sqrt(std::abs(ca)) * matrix(a->B) + std::sqrt(std::abs(cd)) * matrix(d->B);
    CHECK(lora_test::allclose(matrix(n->A), A, 1e-12, 1e-12, "linear on " + l.path + ": A"));
    CHECK(lora_test::allclose(matrix(n->B), B, 1e-12, 1e-12, "linear on " + l.path + ": B"));
    // Not the weighted sum of the deltas: the cross terms B_a A_d and B_d A_a remain.
    const auto exact = reference(m, l.path, w);
    const double off = (delta_of(*n) - exact).abs().max().item<double>();
    const double cross = (std::sqrt(std::abs(ca) * std::abs(cd)) *
                          (matrix(d->B).mm(matrix(a->A)) - matrix(a->B).mm(matrix(d->A))) - (delta_of(*n) - exact))
                             .abs()
                             .max()
                             .item<double>();
    std::cout << "  linear on " << l.path << ": max |delta - exact weighted sum| = " << off
              << ", max |that - cross terms| = " << cross << "\n";
    CHECK(off > 1e-4);
    CHECK(cross < 1e-12);
  }
  // One source: linear is exact, negative weight included (the sign sits on A).
  o.method = lora::CombineMethod::linear;
  auto one = lora::add_weighted_adapter(m, {{"a", -0.7}}, "minus_a", o);
  for (const auto& l : one.layers())
    CHECK(lora_test::allclose(delta_of(*find(m, l.path, "minus_a")), -0.7 * delta_of(*find(m, l.path, "a")), 1e-12,
                              1e-12, "linear of one adapter on " + l.path + ": delta vs -0.7 s B A"));
}

TEST_CASE("combine: svd at full rank equals cat, and at a lower rank its error is the SVD tail", "[combine]") {
  auto m = make();
  add(m, "a", 2, 4, 1, kAll);
  add(m, "b", 3, 6, 2, kAll);
  const std::vector<std::pair<std::string, double>> w = {{"a", 0.7}, {"b", -0.4}};
  lora::CombineOptions o;
  o.method = lora::CombineMethod::svd;
  o.rank = 5;  // the rank of the weighted delta (2 + 3) on every layer
  auto full = lora::add_weighted_adapter(m, w, "full", o);
  check_exact(m, full, w, 1e-10);
  auto cat = lora::add_weighted_adapter(m, w, "cat");
  const auto y_full = output_with(m, {"full"}), y_cat = output_with(m, {"cat"});
  CHECK(lora_test::allclose(y_full, y_cat, 1e-10, 1e-10, "output: svd at rank 5 vs cat"));

  o.rank = 2;
  auto low = lora::add_weighted_adapter(m, w, "low", o);
  for (const auto& l : low.layers()) {
    CHECK(l.rank == 2);
    const auto ref = reference(m, l.path, w);
    const auto sigma = at::linalg_svdvals(ref);  // descending
    const double tail = std::sqrt(sigma.narrow(0, 2, sigma.size(0) - 2).pow(2).sum().item<double>());
    const double err = (delta_of(*find(m, l.path, "low")) - ref).norm().item<double>();
    std::cout << "  svd rank 2 on " << l.path << ": ||delta - exact||_F = " << err
              << ", sqrt(sum of dropped sigma^2) = " << tail << ", diff " << std::abs(err - tail) << "\n";
    CHECK(tail > 1e-3);
    CHECK(std::abs(err - tail) <= 1e-10 * std::max(1.0, tail));
  }
  // Rank 0: the largest source rank on each layer (3).
  o.rank = 0;
  auto deflt = lora::add_weighted_adapter(m, w, "deflt", o);
  for (const auto& l : deflt.layers()) CHECK(l.rank == 3);
}

TEST_CASE("combine: adapters on different layer sets, each layer combines those it carries", "[combine]") {
  auto m = make();
  add(m, "a", 2, 4, 1, kAll);
  add(m, "c", 2, 2, 4, {"lin", "conv", "attn.in_proj.k"});
  const std::vector<std::pair<std::string, double>> w = {{"a", 1.0}, {"c", 0.5}};
  auto ac = lora::add_weighted_adapter(m, w, "ac");
  std::map<std::string, int64_t> rank;
  for (const auto& l : ac.layers()) rank[l.path] = l.rank;
  const std::map<std::string, int64_t> want = {{"emb", 2},   {"lin", 4}, {"conv", 4}, {"plain", 2},
                                               {"attn.in_proj.q", 2}, {"attn.in_proj.k", 2}, {"attn.in_proj.v", 2}};
  CHECK(rank == want);  // both on lin and conv, a alone on emb, plain, q, v; c alone on k
  check_exact(m, ac, w, 1e-12);
  // Layers carrying neither get nothing.
  CHECK(find(m, "attn.out_proj", "ac") == nullptr);
  CHECK(find(m, "attn.in_proj", "ac") == nullptr);
  // svd too (rank 2 everywhere: exact where a single rank-2 source sits).
  lora::CombineOptions o;
  o.method = lora::CombineMethod::svd;
  o.rank = 2;
  auto s = lora::add_weighted_adapter(m, w, "ac_svd", o);
  CHECK(lora_test::allclose(delta_of(*find(m, "attn.in_proj.k", "ac_svd")), 0.5 * delta_of(*find(m, "attn.in_proj.k", "c")),
                            1e-10, 1e-10, "svd on k (c alone, rank 2) vs 0.5 s_c B_c A_c"));
  CHECK(lora_test::allclose(delta_of(*find(m, "emb", "ac_svd")), delta_of(*find(m, "emb", "a")), 1e-10, 1e-10,
                            "svd on emb (a alone, rank 2) vs s_a B_a A_a"));
  // The Embedding's padding row keeps no adapter after an SVD.
  CHECK(find(m, "emb", "ac_svd")->A.select(1, 0).abs().max().item<double>() == 0);
}

TEST_CASE("combine: refusals say why and change nothing", "[combine]") {
  auto m = make();
  add(m, "a", 2, 4, 1, kAll);
  add(m, "b", 3, 6, 2, kAll);
  {
    lora::Config c;
    c.adapter_name = "dora", c.use_dora = true, c.targets = {"lin"};
    lora::inject(*m, c);
  }
  lora::set_active_adapters(*m, {"a", "b", "dora"});
  const auto names = names_per_layer(m);
  torch::Tensor y;
  {
    torch::NoGradGuard g;
    y = m->forward(ids());
  }
  const auto unchanged = [&](const std::string& what) {
    INFO(what);
    CHECK(names_per_layer(m) == names);
    torch::NoGradGuard g;
    CHECK(torch::equal(m->forward(ids()), y));
  };
  lora::CombineOptions svd7;
  svd7.method = lora::CombineMethod::svd;
  svd7.rank = 7;
  lora::CombineOptions lin;
  lin.method = lora::CombineMethod::linear;
  lora::CombineOptions cat_rank;
  cat_rank.rank = 3;

  auto e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {{"a", 1}, {"zz", 1}}, "n"); });
  std::cout << "  unknown: " << e << "\n";
  CHECK(contains(e, "no adapter named 'zz'"));
  CHECK(contains(e, "'a', 'b', 'dora'"));
  unchanged("unknown name");
  e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {{"a", 1}, {"dora", 1}}, "n"); });
  std::cout << "  DoRA: " << e << "\n";
  CHECK(contains(e, "'dora' is a DoRA adapter"));
  unchanged("DoRA source");
  e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {{"a", 1}}, "b"); });
  std::cout << "  existing name: " << e << "\n";
  CHECK(contains(e, "already has an adapter named 'b'"));
  unchanged("existing new name");
  e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {{"a", 1}, {"b", 1}}, "n", lin); });
  std::cout << "  linear, unequal ranks: " << e << "\n";
  CHECK(contains(e, "layer 'emb' has 'a' r=2, 'b' r=3"));
  unchanged("linear with unequal ranks");
  e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {{"a", 1}, {"b", 1}}, "n", svd7); });
  std::cout << "  svd rank: " << e << "\n";
  CHECK(contains(e, "svd rank 7 does not fit layer 'conv'"));
  unchanged("svd rank too large");
  e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {{"a", 1}}, "n", cat_rank); });
  CHECK(contains(e, "rank of the svd method only"));
  e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {{"a", 1}, {"a", 2}}, "n"); });
  CHECK(contains(e, "named twice"));
  e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {{"a", std::nan("")}}, "n"); });
  CHECK(contains(e, "must be finite"));
  e = error_of<lora::ConfigError>([&] { lora::add_weighted_adapter(m, {}, "n"); });
  CHECK(contains(e, "no adapters to combine"));
  unchanged("the other refusals");
}

namespace {

/// A PEFT folder of an adapter on a fresh Mix of width `d`.
std::filesystem::path folder(const std::string& tag, int64_t r, double alpha, uint64_t seed,
                             std::vector<std::string> targets = kSwap, int64_t d = 8, bool dora = false) {
  auto m = make(d);
  lora::Config c;
  c.rank = r, c.alpha = alpha, c.seed = seed, c.targets = std::move(targets), c.use_dora = dora;
  c.init = lora::init::gaussian_gaussian(0.3);
  c.allow_rank_above_min = true;
  auto h = lora::inject(*m, c);
  const auto dir = lora_test::temp_dir("hot_swap_" + tag);
  lora::peft::save(h, dir.string());
  return dir;
}

/// The output of a fresh Mix with folder `dir` loaded.
torch::Tensor fresh_output(const std::filesystem::path& dir) {
  auto m = make();
  lora::peft::load(*m, dir.string());
  torch::NoGradGuard g;
  return m->forward(ids());
}

std::vector<void*> pointers(const lora::ModelAdapter& h) {
  std::vector<void*> out;
  for (const auto& p : h.parameters()) out.push_back(p.data_ptr());
  return out;
}

}  // namespace

TEST_CASE("hot_swap: the file's values go into the target's own tensors", "[hot_swap]") {
  const auto dir1 = folder("one", 4, 8, 1), dir2 = folder("two", 4, 16, 2);
  auto m = make();
  auto target = lora::peft::load(*m, dir1.string());
  const auto ptrs = pointers(target);
  torch::Tensor y1;
  {
    torch::NoGradGuard g;
    y1 = m->forward(ids());
  }
  lora::peft::hot_swap(target, dir2.string());
  CHECK(pointers(target) == ptrs);  // same storage: nothing reallocated
  CHECK(target.layers().size() == 6);
  for (const auto& l : target.layers()) CHECK(l.scale == 4.0);  // 16 / 4, the file's
  torch::Tensor y2;
  {
    torch::NoGradGuard g;
    y2 = m->forward(ids());
  }
  CHECK(lora_test::allclose(y2, fresh_output(dir2), 1e-12, 1e-12, "output after the swap vs a fresh load of the file"));
  CHECK((y2 - y1).abs().max().item<double>() > 1e-3);  // the two adapters differ
  for (const auto& l : lora::detail::layers_of(*m)) CHECK(l.adapter_names().size() <= 1);  // no temporary left
  // The file's scale is the one restore_scale() returns to.
  target.scale_by(0.5);
  CHECK(target.layers()[0].scale == 2.0);
  target.restore_scale();
  CHECK(target.layers()[0].scale == 4.0);
  // And back.
  lora::peft::hot_swap(target, dir1.string());
  CHECK(pointers(target) == ptrs);
  torch::NoGradGuard g;
  CHECK(lora_test::allclose(m->forward(ids()), y1, 1e-12, 1e-12, "output after swapping the first file back"));
  std::filesystem::remove_all(dir1);
  std::filesystem::remove_all(dir2);
}

TEST_CASE("hot_swap: a target of larger rank takes smaller ranks zero-padded, computing exactly the file's adapter", "[hot_swap]") {
  const auto dir_r2 = folder("r2", 2, 2, 3), dir_r4 = folder("r4", 4, 16, 2);
  auto m = make();
  auto target = add(m, "serve", 8, 8, 9, kSwap);
  const auto ptrs = pointers(target);
  for (const auto& [dir, r] : std::vector<std::pair<std::filesystem::path, int64_t>>{{dir_r2, 2}, {dir_r4, 4}}) {
    lora::peft::hot_swap(target, dir.string());
    CHECK(pointers(target) == ptrs);
    for (const auto& l : target.layers()) CHECK(l.rank == 8);
    for (const auto& A : target.a_parameters()) CHECK(matrix(A).narrow(0, r, 8 - r).abs().max().item<double>() == 0);
    for (const auto& B : target.b_parameters()) CHECK(matrix(B).narrow(1, r, 8 - r).abs().max().item<double>() == 0);
    torch::Tensor y;
    {
      torch::NoGradGuard g;
      y = m->forward(ids());
    }
    CHECK(lora_test::allclose(y, fresh_output(dir), 1e-12, 1e-12,
                              "rank-8 target with a rank-" + std::to_string(r) + " file vs a fresh load of it"));
    // Saved as it is now (rank 8, lora_alpha giving the file's scale), it reloads the same.
    const auto again = lora_test::temp_dir("hot_swap_again");
    lora::peft::save(target, again.string());
    CHECK(lora_test::allclose(fresh_output(again), y, 1e-12, 1e-12, "the swapped target saved and reloaded"));
    std::filesystem::remove_all(again);
  }
  std::filesystem::remove_all(dir_r2);
  std::filesystem::remove_all(dir_r4);
}

TEST_CASE("hot_swap: a file that does not fit is refused, the old adapter intact and still served", "[hot_swap]") {
  const auto dir1 = folder("base", 4, 8, 1);
  const auto dir_r8 = folder("r8", 8, 8, 2);
  const auto dir_lin = folder("lin", 4, 8, 3, {"lin"});
  const auto dir_wide = folder("wide", 4, 8, 4, kSwap, 12);
  const auto dir_dora = folder("dora", 4, 8, 5, {"lin"}, 8, true);
  auto m = make();
  auto target = lora::peft::load(*m, dir1.string());
  const auto names = names_per_layer(m);
  std::vector<torch::Tensor> values;
  for (const auto& p : target.parameters()) values.push_back(p.detach().clone());
  torch::Tensor y;
  {
    torch::NoGradGuard g;
    y = m->forward(ids());
  }
  const auto intact = [&](const std::string& what) {
    INFO(what);
    CHECK(names_per_layer(m) == names);
    const auto now = target.parameters();
    for (size_t i = 0; i < now.size(); ++i) CHECK(torch::equal(now[i], values[i]));
    for (const auto& l : target.layers()) CHECK(l.scale == 2.0);
    torch::NoGradGuard g;
    CHECK(torch::equal(m->forward(ids()), y));  // still served, exactly as before
  };
  auto e = error_of<lora::ShapeError>([&] { lora::peft::hot_swap(target, dir_r8.string()); });
  std::cout << "  rank above the target's: " << e << "\n";
  CHECK(contains(e, "has rank 8 on layer"));
  intact("rank 8 into rank 4");
  e = error_of<lora::TargetError>([&] { lora::peft::hot_swap(target, dir_lin.string()); });
  std::cout << "  fewer layers: " << e << "\n";
  CHECK(contains(e, "has no tensors for layer 'emb'"));
  intact("a file on fewer layers");
  e = error_of<lora::ShapeError>([&] { lora::peft::hot_swap(target, dir_wide.string()); });
  std::cout << "  another model size: " << e << "\n";
  CHECK(contains(e, "the model's layer needs"));
  intact("a file for another model size");
  e = error_of<lora::ConfigError>([&] { lora::peft::hot_swap(target, dir_dora.string()); });
  CHECK(contains(e, "use_dora true"));
  intact("a DoRA file");
  e = error_of<lora::FileError>([&] { lora::peft::hot_swap(target, (dir1 / "absent").string()); });
  CHECK(contains(e, "lacks adapter_model.safetensors"));
  intact("no folder");
  target.merge();
  e = error_of<lora::ConfigError>([&] { lora::peft::hot_swap(target, dir1.string()); });
  CHECK(contains(e, "unmerge() it first"));
  target.unmerge();
  // A file on more layers than the target: a target on lin only, the full file.
  auto m2 = make();
  auto small = lora::peft::load(*m2, dir_lin.string());
  e = error_of<lora::TargetError>([&] { lora::peft::hot_swap(small, dir1.string()); });
  std::cout << "  more layers: " << e << "\n";
  CHECK(contains(e, "which adapter 'default' does not carry"));
  for (const auto& l : lora::detail::layers_of(*m2)) CHECK(l.adapter_names().size() == (l.path == "lin" ? 1u : 0u));
  for (const auto& d : {dir1, dir_r8, dir_lin, dir_wide, dir_dora}) std::filesystem::remove_all(d);
}

TEST_CASE("hot_swap: an optimizer made before the swap steps the swapped values", "[hot_swap]") {
  const auto dir2 = folder("opt", 4, 16, 2);
  auto m = make();
  auto target = add(m, "train", 4, 8, 9, kSwap);
  torch::optim::SGD opt(target.parameters(), torch::optim::SGDOptions(0.1));
  lora::peft::hot_swap(target, dir2.string());
  const auto params = target.parameters();
  REQUIRE(opt.param_groups()[0].params().size() == params.size());
  std::vector<torch::Tensor> swapped;
  for (size_t i = 0; i < params.size(); ++i) {
    CHECK(opt.param_groups()[0].params()[i].is_same(params[i]));
    CHECK(params[i].requires_grad());
    swapped.push_back(params[i].detach().clone());
  }
  for (const auto& p : m->parameters()) {  // the base stays frozen: only the adapter trains
    bool adapter = false;
    for (const auto& q : params) adapter |= q.is_same(p);
    CHECK(p.requires_grad() == adapter);
  }
  m->train();
  opt.zero_grad();
  m->forward(ids()).pow(2).mean().backward();
  target.step(opt);
  double moved = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    REQUIRE(params[i].grad().defined());
    CHECK(lora_test::allclose(params[i], swapped[i] - 0.1 * params[i].grad(), 1e-12, 1e-12,
                              "parameter " + std::to_string(i) + " after the step vs swapped - lr * grad"));
    moved = std::max(moved, (params[i] - swapped[i]).abs().max().item<double>());
  }
  CHECK(moved > 1e-6);
  // The next pass (after step()'s sync) sees the stepped values on both paths.
  opt.zero_grad();
  m->forward(ids()).pow(2).mean().backward();
  target.step(opt);
  std::filesystem::remove_all(dir2);
}

// LoRA on every layer kind (Embedding, Conv1d/2d/3d, MultiheadAttention's in_proj and its q/k/v
// slices), on both paths: the library's drop-in layers and plain torch::nn layers adapted by
// inject(). For each kind the test computes the definition of the adapted layer itself, from
// the base weight and the adapter's A and B, and compares (max differences printed):
//  - forward: the drop-in / re-parametrized output against the branch form (base + s B(A(x))),
//    and against the base layer run with W0 + delta W (delta W computed here, as PEFT's merge);
//  - gradients of A and B against autograd through W0 + delta W;
//  - the two paths against each other over a few AdamW steps (losses and A, B);
//  - merge then unmerge restores W (max diff printed).
#include <lora/lora.hpp>

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

namespace F = torch::nn::functional;
using lora_test::contains;
using lora_test::error_of;

/// One kind of layer under test: a model holding one such layer (drop-in or plain), its input,
/// and the layer's computation with an explicit weight.
struct KindCase {
  std::string name;
  std::function<torch::nn::Sequential(bool drop_in)> make;  ///< the same base weights for both
  std::function<torch::Tensor()> input;
  /// The base layer's output with weight `W` (and the layer's own bias).
  std::function<torch::Tensor(torch::nn::Module& layer, const torch::Tensor& W, const torch::Tensor& x)> with_weight;
  /// delta W from A and B as stored, in W's layout (PEFT's merge formula), computed here.
  std::function<torch::Tensor(const torch::Tensor& A, const torch::Tensor& B, double s, const torch::Tensor& W)> delta;
  /// The branch form: the adapter's term for input x, s * B(A(x)) in the output's layout.
  std::function<torch::Tensor(torch::nn::Module& layer, const torch::Tensor& A, const torch::Tensor& B, double s,
                              const torch::Tensor& x)>
      branch;
};

/// The registered base weight of the one layer of `seq`.
torch::Tensor base_weight(torch::nn::Sequential& seq) { return seq[0]->named_parameters(false)["weight"]; }

/// Fills every parameter of `seq` from a fixed generator: both paths get the same base.
void fill(torch::nn::Sequential& seq) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(77);
  for (auto& p : seq->parameters()) p.copy_(torch::randn(p.sizes(), gen) * 0.3);
}

lora::Config config(const std::string& target) {
  lora::Config c;
  c.rank = 3;
  c.alpha = 6;
  c.targets = {target};
  c.init = lora::init::gaussian_gaussian(0.5);  // A and B both non-zero: every check sees both
  c.seed = 5;
  return c;
}

KindCase embedding_case() {
  KindCase k;
  k.name = "Embedding";
  k.make = [](bool drop_in) {
    const auto opts = torch::nn::EmbeddingOptions(20, 6).padding_idx(0);
    torch::nn::Sequential s = drop_in ? torch::nn::Sequential(lora::Embedding(opts)) : torch::nn::Sequential(torch::nn::Embedding(opts));
    fill(s);
    return s;
  };
  k.input = [] { return torch::tensor({{1, 0, 5, 19}, {7, 7, 0, 3}}, torch::kLong); };  // (2, 4), with padding
  k.with_weight = [](torch::nn::Module&, const torch::Tensor& W, const torch::Tensor& x) {
    return F::embedding(x, W, F::EmbeddingFuncOptions().padding_idx(0));
  };
  k.delta = [](const torch::Tensor& A, const torch::Tensor& B, double s, const torch::Tensor&) {
    return (B.mm(A) * s).t();  // (num, dim) = s (B A)^T
  };
  k.branch = [](torch::nn::Module&, const torch::Tensor& A, const torch::Tensor& B, double s, const torch::Tensor& x) {
    return A.t().index_select(0, x.reshape(-1)).mm(B.t()).reshape({x.size(0), x.size(1), -1}) * s;  // (2, 4, dim)
  };
  return k;
}

template <size_t D>
KindCase conv_case(torch::nn::ConvOptions<D> opts, std::vector<int64_t> input_shape) {
  KindCase k;
  k.name = "Conv" + std::to_string(D) + "d";
  k.make = [opts](bool drop_in) {
    torch::nn::Sequential s;
    if constexpr (D == 1) s = drop_in ? torch::nn::Sequential(lora::Conv1d(opts)) : torch::nn::Sequential(torch::nn::Conv1d(opts));
    if constexpr (D == 2) s = drop_in ? torch::nn::Sequential(lora::Conv2d(opts)) : torch::nn::Sequential(torch::nn::Conv2d(opts));
    if constexpr (D == 3) s = drop_in ? torch::nn::Sequential(lora::Conv3d(opts)) : torch::nn::Sequential(torch::nn::Conv3d(opts));
    fill(s);
    return s;
  };
  k.input = [input_shape] {
    auto gen = at::detail::createCPUGenerator(3);
    return torch::randn(input_shape, gen);
  };
  const auto conv = [opts](const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& b, bool geometry) {
    auto o = F::ConvFuncOptions<D>().bias(b);
    if (geometry) o.stride(opts.stride()).padding(opts.padding()).dilation(opts.dilation());
    if constexpr (D == 1) return F::conv1d(x, W, o);
    else if constexpr (D == 2) return F::conv2d(x, W, o);
    else return F::conv3d(x, W, o);
  };
  k.with_weight = [conv](torch::nn::Module& layer, const torch::Tensor& W, const torch::Tensor& x) {
    return conv(x, W, layer.named_parameters(false)["bias"], true);
  };
  k.delta = [](const torch::Tensor& A, const torch::Tensor& B, double s, const torch::Tensor& W) {
    return (B.reshape({B.size(0), -1}).mm(A.reshape({A.size(0), -1})) * s).reshape(W.sizes());
  };
  k.branch = [conv](torch::nn::Module&, const torch::Tensor& A, const torch::Tensor& B, double s, const torch::Tensor& x) {
    return conv(conv(x, A, {}, true), B, {}, false) * s;  // B is a 1x1 convolution
  };
  return k;
}

std::vector<KindCase> cases() {
  return {embedding_case(),
          conv_case<1>(torch::nn::Conv1dOptions(3, 5, 3).stride(2).padding(1).dilation(2), {2, 3, 11}),
          conv_case<2>(torch::nn::Conv2dOptions(3, 4, {3, 2}).padding({1, 0}), {2, 3, 6, 5}),
          conv_case<3>(torch::nn::Conv3dOptions(2, 3, 2).stride(1), {1, 2, 4, 4, 3})};
}

/// (A, B) of the adapter "default" of `seq`'s layer.
std::pair<torch::Tensor, torch::Tensor> ab(const lora::ModelAdapter& a) { return {a.a_parameters().at(0), a.b_parameters().at(0)}; }

/// A case's model on one path with its adapter, and its base weight before injection.
struct Adapted {
  torch::nn::Sequential seq;
  torch::Tensor W0;
  lora::ModelAdapter adapters;
};
Adapted adapted(const KindCase& k, bool drop_in) {
  std::cout << k.name << (drop_in ? " drop-in" : " plain") << ":\n";
  Adapted a{k.make(drop_in), {}, {}};
  a.W0 = base_weight(a.seq).detach().clone();
  a.adapters = lora::inject(*a.seq, config("0"));
  return a;
}

}  // namespace

TEST_CASE("kinds: forward equals the definition, on both paths", "[kinds]") {
  for (auto& k : cases())
    for (const bool drop_in : {true, false}) {
      INFO(k.name << (drop_in ? " (drop-in)" : " (plain torch::nn)"));
      auto [seq, W0, adapters] = adapted(k, drop_in);
      REQUIRE(adapters.layers().size() == 1);
      CHECK(adapters.layers()[0].type == k.name);
      CHECK(adapters.layers()[0].kind == (drop_in ? lora::LayerKind::drop_in : lora::LayerKind::reparametrized));
      const auto [A, B] = ab(adapters);
      const double s = 2.0;  // alpha / r
      const auto x = k.input();
      const auto y = seq->forward(x);
      auto& layer = *seq[0];
      const auto base = k.with_weight(layer, W0, x);
      CHECK(lora_test::allclose(y, base + k.branch(layer, A.detach(), B.detach(), s, x), 1e-5, 1e-5, "output vs base + branch"));
      CHECK(lora_test::allclose(y, k.with_weight(layer, W0 + k.delta(A.detach(), B.detach(), s, W0), x), 1e-5, 1e-5,
                     "output vs base layer with W0 + delta W"));
      CHECK(lora_test::allclose(adapters.state_dict().begin()->value(), A, 0, 0, "state_dict's A"));
    }
}

TEST_CASE("kinds: gradients of A and B equal those through W0 + delta W, on both paths", "[kinds]") {
  for (auto& k : cases())
    for (const bool drop_in : {true, false}) {
      INFO(k.name << (drop_in ? " (drop-in)" : " (plain torch::nn)"));
      auto [seq, W0, adapters] = adapted(k, drop_in);
      const auto [A, B] = ab(adapters);
      const auto x = k.input();
      const auto y = seq->forward(x);
      auto gen = at::detail::createCPUGenerator(9);
      const auto g = torch::randn(y.sizes(), gen);
      (y * g).sum().backward();
      // The reference: the base layer with W0 + delta(A, B), A and B as fresh leaves.
      auto Ar = A.detach().clone().requires_grad_(true), Br = B.detach().clone().requires_grad_(true);
      (k.with_weight(*seq[0], W0 + k.delta(Ar, Br, 2.0, W0), x) * g).sum().backward();
      CHECK(lora_test::allclose(A.grad(), Ar.grad(), 1e-4, 1e-5, "dL/dA"));
      CHECK(lora_test::allclose(B.grad(), Br.grad(), 1e-4, 1e-5, "dL/dB"));
      CHECK_FALSE(base_weight(seq).requires_grad());  // frozen
    }
}

TEST_CASE("kinds: the drop-in and the plain layer train alike, and merge / unmerge restore W", "[kinds]") {
  for (auto& k : cases()) {
    INFO(k.name);
    std::cout << k.name << ":\n";
    auto a = k.make(true), b = k.make(false);
    const auto W0 = base_weight(a).detach().clone();
    auto ha = lora::inject(*a, config("0")), hb = lora::inject(*b, config("0"));
    torch::optim::AdamW oa(ha.parameters(), torch::optim::AdamWOptions(1e-2)), ob(hb.parameters(), torch::optim::AdamWOptions(1e-2));
    const auto x = k.input();
    auto gen = at::detail::createCPUGenerator(4);
    const auto target = torch::randn(a->forward(x).sizes(), gen);
    double first = 0, last = 0;
    for (int step = 0; step < 4; ++step) {
      oa.zero_grad();
      ob.zero_grad();
      const auto la = (a->forward(x) - target).pow(2).mean(), lb = (b->forward(x) - target).pow(2).mean();
      la.backward();
      lb.backward();
      ha.step(oa);
      hb.step(ob);
      CHECK(la.item<double>() == Approx(lb.item<double>()).epsilon(1e-5));
      (step == 0 ? first : last) = la.item<double>();
    }
    CHECK(last < first);
    CHECK(lora_test::allclose(ab(ha).first, ab(hb).first, 1e-4, 1e-6, "A after 4 steps, drop-in vs plain"));
    CHECK(lora_test::allclose(ab(ha).second, ab(hb).second, 1e-4, 1e-6, "B after 4 steps, drop-in vs plain"));
    for (auto* seq : {&a, &b}) {
      auto& h = seq == &a ? ha : hb;
      const auto before = (*seq)->forward(x).detach();
      const auto exported = lora::merged_state_dict(**seq);  // keep the dict: find() points into it
      const auto* merged_export = exported.find("0.weight");
      REQUIRE(merged_export);
      h.merge();
      CHECK(lora_test::allclose((*seq)->forward(x), before, 1e-5, 1e-5, "merged forward vs unmerged"));
      CHECK(lora_test::allclose(base_weight(*seq), *merged_export, 1e-6, 1e-6, "merged W vs merged_state_dict"));
      h.unmerge();
      CHECK(lora_test::allclose(base_weight(*seq), W0, 0, 1e-6, "W after merge + unmerge vs W0"));
      CHECK(lora_test::allclose((*seq)->forward(x), before, 1e-5, 1e-5, "forward after unmerge"));
    }
  }
}

TEST_CASE("kinds: an Embedding gets PEFT's default init (A = 0, B ~ N(0, 1)) and keeps the padding row", "[kinds]") {
  lora::Embedding e(torch::nn::EmbeddingOptions(300, 40).padding_idx(2));
  const auto W0 = e->weight.detach().clone();
  lora::LayerAdapterSpec spec;
  spec.rank = 8;
  spec.alpha = 8;  // s = alpha / r = 1
  const auto& a = e->add_adapter("default", spec);
  CHECK(a.A.sizes() == torch::IntArrayRef{8, 300});
  CHECK(a.B.sizes() == torch::IntArrayRef{40, 8});
  CHECK(a.A.abs().max().item<double>() == 0.0);
  CHECK(a.B.std().item<double>() == Approx(1.0).epsilon(0.1));
  const auto ids = torch::tensor({2, 5, 2}, torch::kLong);
  CHECK(lora_test::allclose(e->forward(ids), F::embedding(ids, W0), 0, 0, "a new adapter is a no-op"));
  // Whatever the init, the padding row gets no adapter (A's padding column is zero) ...
  lora::LayerAdapterSpec g = spec;
  g.init = lora::init::gaussian_gaussian(1.0);
  const auto& b = e->add_adapter("gaussian", g);
  CHECK(b.A.select(1, 2).abs().max().item<double>() == 0.0);
  CHECK(b.A.select(1, 5).abs().max().item<double>() > 0.0);
  e->remove_adapter("gaussian");
  // ... and no gradient, as the base's padding row gets none.
  const_cast<lora::LayerAdapter&>(a).A.data().normal_();
  e->forward(ids).sum().backward();
  CHECK(a.A.grad().select(1, 2).abs().max().item<double>() == 0.0);
  CHECK(a.A.grad().select(1, 5).abs().max().item<double>() > 0.0);
  CHECK(contains(error_of<lora::ConfigError>([&] {
                   lora::LayerAdapterSpec d = spec;
                   d.dropout = 0.1;
                   e->add_adapter("dropped", d);
                 }),
                 "token ids"));
}

TEST_CASE("kinds: MultiheadAttention's in_proj, its q and v slices, and out_proj", "[kinds]") {
  torch::manual_seed(1);
  const int64_t E = 8;
  torch::nn::TransformerEncoderLayer plain(torch::nn::TransformerEncoderLayerOptions(E, 2).dim_feedforward(16).dropout(0));
  torch::nn::TransformerEncoderLayer copy(torch::nn::TransformerEncoderLayerOptions(E, 2).dim_feedforward(16).dropout(0));
  {
    torch::NoGradGuard no_grad;
    auto src = plain->named_parameters(), dst = copy->named_parameters();
    for (const auto& p : src) dst[p.key()].copy_(p.value());
  }
  const auto W0 = plain->self_attn->in_proj_weight.detach().clone();
  auto c = config("self_attn.in_proj.q");
  c.targets = {"self_attn.in_proj.q", "self_attn.in_proj.v"};
  auto adapters = lora::inject(*plain, c);
  REQUIRE(adapters.layers().size() == 2);
  CHECK(adapters.layers()[0].path == "self_attn.in_proj.q");
  CHECK(adapters.layers()[0].type == "MultiheadAttention.in_proj.q");
  CHECK(adapters.layers()[1].path == "self_attn.in_proj.v");
  const auto As = adapters.a_parameters(), Bs = adapters.b_parameters();
  CHECK(As[0].sizes() == torch::IntArrayRef{3, E});
  CHECK(Bs[0].sizes() == torch::IntArrayRef{E, 3});

  auto gen = at::detail::createCPUGenerator(2);
  const auto x = torch::randn({5, 2, E}, gen);  // (T, B, E)
  // The definition: q rows get s B_q A_q, v rows s B_v A_v, k rows nothing.
  auto Aq = As[0].detach().clone().requires_grad_(true), Bq = Bs[0].detach().clone().requires_grad_(true);
  auto Av = As[1].detach().clone().requires_grad_(true), Bv = Bs[1].detach().clone().requires_grad_(true);
  const auto delta = torch::cat({Bq.mm(Aq) * 2.0, torch::zeros({E, E}), Bv.mm(Av) * 2.0}, 0);
  copy->self_attn->in_proj_weight = W0 + delta;  // the member forward() reads
  const auto y = plain->forward(x), y_ref = copy->forward(x);
  CHECK(lora_test::allclose(y, y_ref, 1e-5, 1e-5, "TransformerEncoderLayer with q, v adapters vs W0 + delta"));
  auto g = torch::randn(y.sizes(), gen);
  (y * g).sum().backward();
  (y_ref * g).sum().backward();
  CHECK(lora_test::allclose(As[0].grad(), Aq.grad(), 1e-4, 1e-5, "dL/dA_q"));
  CHECK(lora_test::allclose(Bs[1].grad(), Bv.grad(), 1e-4, 1e-5, "dL/dB_v"));

  // merge / unmerge through the handle; the registered in_proj_weight comes back.
  const auto before = plain->forward(x).detach();
  adapters.merge();
  CHECK(lora_test::allclose(plain->forward(x), before, 1e-5, 1e-5, "merged forward"));
  adapters.unmerge();
  CHECK(lora_test::allclose(plain->self_attn->named_parameters(false)["in_proj_weight"], W0, 0, 1e-6, "in_proj_weight after unmerge"));

  // Naming the attention module adapts in_proj (whole, PEFT's layout) and out_proj, as PEFT.
  torch::nn::TransformerEncoderLayer other(torch::nn::TransformerEncoderLayerOptions(E, 2).dim_feedforward(16));
  auto whole = lora::inject(*other, config("self_attn"));
  REQUIRE(whole.layers().size() == 2);
  CHECK(whole.layers()[0].path == "self_attn.in_proj");
  CHECK(whole.a_parameters()[0].sizes() == torch::IntArrayRef{3, E});
  CHECK(whole.b_parameters()[0].sizes() == torch::IntArrayRef{3 * E, 3});
  CHECK(whole.layers()[1].path == "self_attn.out_proj");
  CHECK(whole.layers()[1].type == "Linear");
}

TEST_CASE("kinds: a model of plain torch::nn layers only (Embedding, TransformerEncoder, Conv2d, Linear) trains and round-trips through PEFT", "[kinds]") {
  struct NetImpl : torch::nn::Module {
    NetImpl() {
      emb = register_module("emb", torch::nn::Embedding(30, 16));
      encoder = register_module("encoder", torch::nn::TransformerEncoder(torch::nn::TransformerEncoderOptions(
                                              torch::nn::TransformerEncoderLayerOptions(16, 2).dim_feedforward(32).dropout(0), 1)));
      conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 8, {3, 1}).padding({1, 0})));
      head = register_module("head", torch::nn::Linear(8, 3));
    }
    torch::Tensor forward(const torch::Tensor& ids) {                 // (B, T)
      auto h = encoder(emb(ids).transpose(0, 1)).transpose(0, 1);     // (B, T, 16)
      h = torch::relu(conv(h.transpose(1, 2).unsqueeze(3)));          // (B, 8, T, 1)
      return head(h.mean({2, 3}));                                    // (B, 3)
    }
    torch::nn::Embedding emb{nullptr};
    torch::nn::TransformerEncoder encoder{nullptr};
    torch::nn::Conv2d conv{nullptr};
    torch::nn::Linear head{nullptr};
  };
  for (const auto& targets : std::vector<std::vector<std::string>>{
           {"emb", "conv", "self_attn.in_proj.q", "self_attn.in_proj.v"},
           {"re:.*self_attn", "emb"},
           {"all-linear", "conv"}}) {
    INFO(targets.front() << " ...");
    torch::manual_seed(0);
    auto net = std::make_shared<NetImpl>();
    lora::Config c;
    c.rank = 4;
    c.alpha = 8;
    c.targets = targets;
    c.adapt_output_head = true;
    c.allow_rank_above_min = true;  // the 8 -> 3 head
    auto adapters = lora::inject(*net, c);
    torch::optim::AdamW opt(adapters.parameters(), torch::optim::AdamWOptions(1e-2));
    auto gen = at::detail::createCPUGenerator(1);
    const auto ids = torch::randint(30, {16, 6}, gen);
    const auto labels = ids.select(1, 0) % 3;
    double first = 0, last = 0;
    for (int step = 0; step < 30; ++step) {
      opt.zero_grad();
      const auto loss = F::cross_entropy(net->forward(ids), labels);
      loss.backward();
      adapters.step(opt);
      (step == 0 ? first : last) = loss.item<double>();
    }
    std::cout << "plain torch::nn model, targets " << targets.front() << " ...: loss " << first << " -> " << last << "\n";
    CHECK(last < 0.7 * first);
    // Through a PEFT folder into a fresh model with the same base: the same outputs.
    net->eval();
    const auto y = net->forward(ids).detach();
    const auto dir = lora_test::temp_dir("plain_model_peft");
    lora::peft::save(adapters, dir.string());
    torch::manual_seed(0);
    auto fresh = std::make_shared<NetImpl>();
    fresh->eval();
    lora::peft::load(*fresh, dir.string());
    CHECK(lora_test::allclose(fresh->forward(ids), y, 1e-5, 1e-6, "plain torch::nn model through a PEFT folder"));
    std::filesystem::remove_all(dir);
  }
}

TEST_CASE("kinds: what cannot be adapted says why, and nothing changes", "[kinds]") {
  // A module LoRA cannot adapt: the error names the kinds it can and the closest layers.
  torch::nn::Sequential seq(torch::nn::Linear(4, 4), torch::nn::LayerNorm(torch::nn::LayerNormOptions({4})));
  const auto e = error_of<lora::TargetError>([&] { lora::inject(*seq, config("1")); });
  CHECK(contains(e, "'1' (torch::nn::LayerNormImpl)"));
  CHECK(contains(e, "Embedding, Conv1d, Conv2d, Conv3d"));
  CHECK(contains(e, "Closest adaptable layers: '0'"));
  // Grouped convolutions: refused on both paths, naming the layer and the option.
  const auto grouped = torch::nn::Conv2dOptions(4, 4, 3).groups(2);
  for (const bool drop_in : {true, false}) {
    torch::nn::Sequential s = drop_in ? torch::nn::Sequential(lora::Conv2d(grouped)) : torch::nn::Sequential(torch::nn::Conv2d(grouped));
    const auto W = base_weight(s).detach().clone();
    const auto g = error_of<lora::ConfigError>([&] { lora::inject(*s, config("0")); });
    CHECK(contains(g, "layer '0' (Conv2d) cannot carry a LoRA adapter: groups = 2"));
    CHECK(s[0]->named_parameters().size() == 2);  // weight and bias, nothing added
    CHECK(torch::equal(base_weight(s), W));
  }
  // Padding modes: the plain layer's merged weight supports them; the drop-in refuses them.
  const auto reflect = torch::nn::Conv1dOptions(2, 3, 3).padding(1).padding_mode(torch::kReflect);
  torch::nn::Sequential ok{torch::nn::Conv1d(reflect)};
  CHECK_NOTHROW(lora::inject(*ok, config("0")));
  torch::nn::Sequential refused{lora::Conv1d(reflect)};
  CHECK(contains(error_of<lora::ConfigError>([&] { lora::inject(*refused, config("0")); }), "padding_mode kReflect"));
  // DoRA outside Linear layers.
  torch::nn::Sequential emb(lora::Embedding(10, 4));
  auto dora = config("0");
  dora.use_dora = true;
  CHECK(contains(error_of<lora::ConfigError>([&] { lora::inject(*emb, dora); }), "DoRA (use_dora) on Linear layers only"));
}

TEST_CASE("kinds: a weight tied between two layers is not adapted in one place silently", "[kinds]") {
  struct TiedImpl : torch::nn::Module {
    TiedImpl() {
      // As GPT-2's lm_head and wte (examples/common/models/gpt2.hpp): one tensor under both names.
      head = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(4, 12).bias(false)));
      emb = register_module("emb", torch::nn::Embedding(torch::nn::EmbeddingOptions(12, 4)._weight(head->weight)));
    }
    torch::nn::Linear head{nullptr};
    torch::nn::Embedding emb{nullptr};
  };
  auto net = std::make_shared<TiedImpl>();
  REQUIRE(net->emb->weight.unsafeGetTensorImpl() == net->head->weight.unsafeGetTensorImpl());
  auto c = config("head");
  const auto e = error_of<lora::ConfigError>([&] { lora::inject(*net, c); });
  CHECK(contains(e, "layer 'head' shares its weight with 'emb' (tied weights)"));
  CHECK(net->head->named_children().is_empty());  // nothing was added
  c.allow_untied_weights = true;
  CHECK_NOTHROW(lora::inject(*net, c));
}

TEST_CASE("kinds: a PEFT folder saved then loaded reproduces the output, for every kind and path", "[kinds][peft]") {
  for (auto& k : cases())
    for (const bool drop_in : {true, false}) {
      INFO(k.name << (drop_in ? " (drop-in)" : " (plain torch::nn)"));
      auto [seq, W0, adapters] = adapted(k, drop_in);
      const auto x = k.input();
      const auto y = seq->forward(x).detach();
      const auto dir = lora_test::temp_dir("kinds_peft");
      lora::peft::save(adapters, dir.string());
      // PEFT's names and shapes for this kind.
      const lora::safetensors::File file((dir / "adapter_model.safetensors").string());
      const bool embedding = k.name == "Embedding";
      const auto a_key = std::string("base_model.model.0.") + (embedding ? "lora_embedding_A" : "lora_A.weight");
      const auto b_key = std::string("base_model.model.0.") + (embedding ? "lora_embedding_B" : "lora_B.weight");
      CHECK(at::IntArrayRef(file.info(a_key).shape) == adapters.a_parameters()[0].sizes());
      CHECK(at::IntArrayRef(file.info(b_key).shape) == adapters.b_parameters()[0].sizes());
      auto fresh = k.make(drop_in);
      CHECK_FALSE(torch::allclose(fresh->forward(x), y));
      lora::peft::load(*fresh, dir.string());
      CHECK(lora_test::allclose(fresh->forward(x), y, 0, 0, "reloaded vs saved"));
      // A file whose tensors do not fit (another kernel, another vocabulary) is refused, naming
      // both shapes, and the model is unchanged.
      torch::nn::Sequential other;
      if (k.name == "Embedding") other = torch::nn::Sequential(torch::nn::Embedding(torch::nn::EmbeddingOptions(21, 6).padding_idx(0)));
      if (k.name == "Conv2d") other = torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3).padding(1)));
      if (other->size() > 0) {
        const auto e = error_of<lora::ShapeError>([&] { lora::peft::load(*other, dir.string()); });
        CHECK(contains(e, "for rank 3 the model's layer needs"));
        CHECK(contains(e, embedding ? "[3, 20]" : "[3, 3, 3, 2]"));  // what the file has
        CHECK(contains(e, embedding ? "[3, 21]" : "[3, 3, 3, 3]"));  // what the layer needs
        CHECK(other[0]->named_children().is_empty());                // nothing added
      }
      std::filesystem::remove_all(dir);
    }
}

TEST_CASE("kinds: an attention's adapters in PEFT's layout, slices written as one exact in_proj adapter", "[kinds][peft]") {
  const int64_t E = 8;
  const auto make = [] {
    torch::manual_seed(3);
    return torch::nn::TransformerEncoderLayer(torch::nn::TransformerEncoderLayerOptions(E, 2).dim_feedforward(16).dropout(0));
  };
  auto gen = at::detail::createCPUGenerator(5);
  const auto x = torch::randn({4, 2, E}, gen);
  for (const auto& targets : std::vector<std::vector<std::string>>{{"self_attn"}, {"self_attn.in_proj.q", "self_attn.in_proj.v"}}) {
    INFO(targets.front());
    auto layer = make();
    auto c = config(targets.front());
    c.targets = targets;
    auto adapters = lora::inject(*layer, c);
    const auto y = layer->forward(x).detach();
    const auto dir = lora_test::temp_dir("attention_peft");
    lora::peft::save(adapters, dir.string());
    const lora::safetensors::File file((dir / "adapter_model.safetensors").string());
    const bool sliced = targets.size() == 2;
    CHECK(file.info("base_model.model.self_attn.lora_A.weight").shape == std::vector<int64_t>{sliced ? 6 : 3, E});
    CHECK(file.info("base_model.model.self_attn.lora_B.weight").shape == std::vector<int64_t>{3 * E, sliced ? 6 : 3});
    CHECK(file.info("base_model.model.self_attn.base_layer.out_proj.lora_A.weight").shape ==
          std::vector<int64_t>{sliced ? 1 : 3, E});
    const auto config_json = lora::read_json<nlohmann::json>(dir / "adapter_config.json");
    CHECK(config_json["target_modules"] == nlohmann::json::array({"self_attn"}));
    auto fresh = make();
    auto loaded = lora::peft::load(*fresh, dir.string());
    CHECK(lora_test::allclose(fresh->forward(x), y, 1e-5, 1e-6, "attention adapter reloaded vs saved"));
    REQUIRE(loaded.layers().size() == 2);
    CHECK(loaded.layers()[0].path == "self_attn.in_proj");
    CHECK(loaded.layers()[1].path == "self_attn.out_proj");
    std::filesystem::remove_all(dir);
  }
}

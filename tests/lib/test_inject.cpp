// lora::inject on both kinds of models: one declared with lora::Linear (fast path) and one
// written only with plain torch::nn types (compatibility path).
#include <lora/lora.hpp>

#include "support.hpp"

namespace {

/// A model declared with lora::Linear: attention-like and FFN-like blocks plus a head.
struct FastNetImpl : torch::nn::Module {
  FastNetImpl() {
    for (int i = 0; i < 2; ++i) {
      auto block = std::make_shared<torch::nn::Module>();
      q.push_back(block->register_module("q_lin", lora::Linear(16, 16)));
      v.push_back(block->register_module("v_lin", lora::Linear(16, 16)));
      ffn.push_back(block->register_module("lin1", lora::Linear(16, 32)));
      ffn2.push_back(block->register_module("lin2", lora::Linear(32, 16)));
      layers->push_back(block);
    }
    register_module("layer", layers);
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({16})));
    classifier = register_module("classifier", lora::Linear(16, 4));
  }
  torch::Tensor forward(torch::Tensor x) {  // x (B, 16)
    for (size_t i = 0; i < q.size(); ++i) {
      x = x + q[i](x) * torch::sigmoid(v[i](x));
      x = x + ffn2[i](torch::relu(ffn[i](x)));
    }
    return classifier(norm(x));  // (B, 4)
  }
  torch::nn::ModuleList layers;
  std::vector<lora::Linear> q, v, ffn, ffn2;
  torch::nn::LayerNorm norm{nullptr};
  lora::Linear classifier{nullptr};
};
TORCH_MODULE(FastNet);

/// The same computation written only with plain torch::nn types: Linear members, a
/// Sequential and a ModuleList, none of which the library knows.
struct PlainNetImpl : torch::nn::Module {
  PlainNetImpl() {
    for (int i = 0; i < 2; ++i) {
      auto block = std::make_shared<torch::nn::Module>();
      q.push_back(block->register_module("q_lin", torch::nn::Linear(16, 16)));
      v.push_back(block->register_module("v_lin", torch::nn::Linear(16, 16)));
      ffn.push_back(block->register_module("lin1", torch::nn::Linear(16, 32)));
      ffn2.push_back(block->register_module("lin2", torch::nn::Linear(32, 16)));
      layers->push_back(block);
    }
    register_module("layer", layers);
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({16})));
    head = register_module("head", torch::nn::Sequential(torch::nn::Identity(), torch::nn::Linear(16, 4)));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (size_t i = 0; i < q.size(); ++i) {
      x = x + q[i](x) * torch::sigmoid(v[i](x));
      x = x + ffn2[i](torch::relu(ffn[i](x)));
    }
    return head->forward(norm(x));
  }
  torch::nn::ModuleList layers;
  std::vector<torch::nn::Linear> q, v, ffn, ffn2;
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Sequential head{nullptr};
};
TORCH_MODULE(PlainNet);

/// Copies every parameter of `from` into the same-named one of `to`; PlainNet's "head.1"
/// is FastNet's "classifier".
void copy_weights(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard g;
  auto dst = to.named_parameters();
  for (const auto& p : from.named_parameters()) {
    auto key = p.key();
    if (!dst.contains(key) && key.rfind("head.1.", 0) == 0) key = "classifier." + key.substr(7);
    if (!dst.contains(key) && key.rfind("classifier.", 0) == 0) key = "head.1." + key.substr(11);
    dst[key].copy_(p.value());
  }
}

/// "all-linear" with the output head (the classifier) adapted too.
lora::Config config(int64_t r = 4) {
  lora::Config c;
  c.rank = r;
  c.alpha = 8;
  c.seed = 3;
  c.adapt_output_head = true;
  return c;
}

/// Non-zero B everywhere, so adapters change the output.
void randomize_b(const lora::ModelAdapter& a) {
  torch::NoGradGuard g;
  for (auto& b : a.b_parameters()) b.normal_(0, 0.1);
  a.sync();
}

template <typename Net>
std::vector<float> train(Net& net, lora::ModelAdapter& adapters, int steps, int accumulate = 1) {
  torch::manual_seed(99);
  torch::optim::AdamW opt(adapters.parameters(), torch::optim::AdamWOptions(1e-2));
  std::vector<float> losses;
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    float total = 0;
    for (int k = 0; k < accumulate; ++k) {
      auto x = torch::randn({8, 16});
      auto y = torch::randint(0, 4, {8});
      torch::Tensor loss = torch::nn::functional::cross_entropy(net->forward(x), y) / accumulate;
      loss.backward();
      total += loss.item<float>();
    }
    adapters.step(opt);
    losses.push_back(total);
  }
  return losses;
}

}  // namespace

TEST_CASE("inject on a lora::Linear model: layers, freezing, trainable parameters", "[inject][fast]") {
  torch::manual_seed(1);
  FastNet net;
  auto x = torch::randn({4, 16});
  auto before = net->forward(x).detach();
  auto adapters = lora::inject(net, config());
  REQUIRE(adapters.layers().size() == 9);  // 2 x (q, v, lin1, lin2) + classifier
  for (const auto& l : adapters.layers()) CHECK(l.kind == lora::LayerKind::drop_in);
  CHECK(adapters.layers()[0].path == "layer.0.q_lin");
  CHECK(adapters.layers()[0].scale == Approx(2.0));
  // r (in + out) per layer.
  const int64_t expected = 2 * 4 * ((16 + 16) * 2 + (16 + 32) + (32 + 16)) + 4 * (16 + 4);
  CHECK(adapters.trainable_parameter_count() == expected);
  for (const auto& p : net->named_parameters()) {
    const bool is_adapter = p.key().find(".lora_") != std::string::npos;
    INFO(p.key());
    CHECK(p.value().requires_grad() == is_adapter);
  }
  REQUIRE(torch::equal(net->forward(x), before));  // B = 0
  CHECK(adapters.summary().find("layer.1.lin2") != std::string::npos);
}

TEST_CASE("inject on a plain torch::nn model: Linear members, Sequential, ModuleList", "[inject][compat]") {
  torch::manual_seed(2);
  PlainNet net;
  auto x = torch::randn({4, 16});
  auto before = net->forward(x).detach();
  auto adapters = lora::inject(net, config());
  REQUIRE(adapters.layers().size() == 9);
  for (const auto& l : adapters.layers()) CHECK(l.kind == lora::LayerKind::reparametrized);
  CHECK(adapters.layers().back().path == "head.1");
  REQUIRE(torch::equal(net->forward(x), before));  // B = 0: exactly the base
  // The base stays the registered "weight": state dicts and checkpoints see W0.
  for (const auto& p : net->named_parameters()) {
    INFO(p.key());
    CHECK(p.value().requires_grad() == (p.key().find(".lora_") != std::string::npos));
  }
  // The adapter reaches the forward pass, also through the Sequential's own copy.
  randomize_b(adapters);
  REQUIRE_FALSE(torch::allclose(net->forward(x), before));
  auto losses = train(net, adapters, 30);
  CHECK(losses.back() < losses.front());
}

TEST_CASE("the compatibility path trains exactly like the fast path", "[inject][compat]") {
  torch::manual_seed(3);
  FastNet fast;
  PlainNet plain;
  copy_weights(*fast, *plain);
  auto cfg = config();
  cfg.exclude = {"classifier", "head.1"};
  REQUIRE_THROWS_AS(lora::inject(fast, cfg), lora::TargetError);  // "head.1" is not in FastNet
  cfg.exclude = {"re:(classifier|head\\.1)"};
  auto fa = lora::inject(fast, cfg);
  auto pa = lora::inject(plain, cfg);
  REQUIRE(fa.layers().size() == 8);
  REQUIRE(pa.layers().size() == 8);
  auto lf = train(fast, fa, 5);
  auto lp = train(plain, pa, 5);
  for (size_t i = 0; i < lf.size(); ++i) CHECK(lp[i] == Approx(lf[i]).epsilon(1e-4));
  auto x = torch::randn({3, 16});
  REQUIRE(lora_test::allclose(plain->forward(x), fast->forward(x), 1e-4, 1e-5, "after 5 steps"));
  auto sf = fa.state_dict(), sp = pa.state_dict();
  for (const auto& item : sf) REQUIRE(lora_test::allclose(sp[item.key()], item.value(), 1e-4, 1e-5, item.key()));
}

TEST_CASE("gradient accumulation equals one big batch, on both paths", "[inject][accumulate]") {
  auto run = [](auto net, int accumulate) {
    torch::manual_seed(4);
    auto adapters = lora::inject(net, config());
    randomize_b(adapters);
    torch::manual_seed(5);
    auto x = torch::randn({8, 16});
    auto y = torch::randint(0, 4, {8});
    for (int k = 0; k < accumulate; ++k) {
      auto n = 8 / accumulate;
      auto xs = x.narrow(0, k * n, n), ys = y.narrow(0, k * n, n);
      (torch::nn::functional::cross_entropy(net->forward(xs), ys) / accumulate).backward();
    }
    std::vector<torch::Tensor> grads;
    for (auto& p : adapters.parameters()) grads.push_back(p.grad().clone());
    return grads;
  };
  for (int kind = 0; kind < 2; ++kind) {
    INFO((kind ? "plain" : "fast"));
    torch::manual_seed(6);
    auto one = kind ? run(PlainNet(), 1) : run(FastNet(), 1);
    torch::manual_seed(6);
    auto four = kind ? run(PlainNet(), 4) : run(FastNet(), 4);
    REQUIRE(one.size() == four.size());
    for (size_t i = 0; i < one.size(); ++i) REQUIRE(lora_test::allclose(four[i], one[i], 1e-4, 1e-6, "grad"));
  }
}

TEST_CASE("evaluation under NoGradGuard, on both paths", "[inject][eval]") {
  torch::manual_seed(7);
  PlainNet plain;
  FastNet fast;
  auto pa = lora::inject(plain, config());
  auto fa = lora::inject(fast, config());
  train(plain, pa, 2);
  train(fast, fa, 2);
  auto x = torch::randn({3, 16});
  auto with_grad_p = plain->forward(x).detach(), with_grad_f = fast->forward(x).detach();
  torch::NoGradGuard no_grad;
  auto yp = plain->forward(x), yf = fast->forward(x);
  CHECK_FALSE(yp.requires_grad());
  REQUIRE(torch::equal(yp, with_grad_p));
  REQUIRE(torch::equal(yf, with_grad_f));
}

TEST_CASE("a stale effective weight throws instead of training the wrong thing", "[inject][compat][stale]") {
  torch::manual_seed(8);
  PlainNet net;
  auto adapters = lora::inject(net, config());
  torch::optim::SGD opt(adapters.parameters(), torch::optim::SGDOptions(0.1));
  auto x = torch::randn({4, 16});
  net->forward(x).sum().backward();
  opt.step();  // the plain optimizer: A and B change, the effective weights do not
  opt.zero_grad();
  try {
    net->forward(x).sum().backward();
    FAIL("no error for a stale weight");
  } catch (const lora::StaleWeightError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("adapters.step(optimizer)") != std::string::npos);
    CHECK(msg.find("layer '") != std::string::npos);
  }
  adapters.sync();
  opt.zero_grad();
  REQUIRE_NOTHROW(net->forward(x).sum().backward());
}

TEST_CASE("model->to() after injection, on both paths", "[inject][device]") {
  torch::manual_seed(9);
  PlainNet plain;
  FastNet fast;
  auto pa = lora::inject(plain, config());
  auto fa = lora::inject(fast, config());
  randomize_b(pa);
  randomize_b(fa);
  auto x = torch::randn({2, 16});
  auto yp = plain->forward(x).detach(), yf = fast->forward(x).detach();
  plain->to(torch::kDouble);
  fast->to(torch::kDouble);
  auto xd = x.to(torch::kDouble);
  REQUIRE(lora_test::allclose(plain->forward(xd), yp, 1e-5, 1e-6, "plain in double"));
  REQUIRE(lora_test::allclose(fast->forward(xd), yf, 1e-5, 1e-6, "fast in double"));
  for (auto& p : pa.parameters()) CHECK(p.dtype() == torch::kDouble);
  // Training still works after the move.
  torch::optim::SGD opt(pa.parameters(), torch::optim::SGDOptions(0.1));
  plain->forward(xd).sum().backward();
  REQUIRE_NOTHROW(pa.step(opt));
  if (torch::cuda::is_available()) {
    plain->to(torch::kCUDA);
    fast->to(torch::kCUDA);
    CHECK(plain->forward(xd.cuda()).is_cuda());
    CHECK(fast->forward(xd.cuda()).is_cuda());
  } else {
    WARN("no CUDA device: the CUDA part of this test did not run");
  }
}

TEST_CASE("merge, unmerge, disable, enable through the handle, on both paths", "[inject][merge]") {
  for (int kind = 0; kind < 2; ++kind) {
    INFO((kind ? "plain" : "fast"));
    torch::manual_seed(10);
    PlainNet plain;
    FastNet fast;
    torch::nn::Module& net = kind ? static_cast<torch::nn::Module&>(*plain) : *fast;
    auto fwd = [&](torch::Tensor x) { return kind ? plain->forward(x) : fast->forward(x); };
    auto x = torch::randn({5, 16});
    auto base = fwd(x).detach();
    auto adapters = lora::inject(net, config());
    randomize_b(adapters);
    auto adapted = fwd(x).detach();
    REQUIRE_FALSE(torch::allclose(adapted, base, 1e-4, 1e-4));
    adapters.disable();
    REQUIRE(torch::equal(fwd(x), base));
    adapters.enable();
    REQUIRE(torch::equal(fwd(x), adapted));
    adapters.merge();
    REQUIRE(lora_test::allclose(fwd(x), adapted, 1e-5, 1e-5, "merged"));
    adapters.unmerge();
    REQUIRE(lora_test::allclose(fwd(x), adapted, 1e-5, 1e-5, "unmerged"));
    adapters.merge();
    adapters.disable();  // unmerges first: the base again, within rounding
    REQUIRE(lora_test::allclose(fwd(x), base, 1e-5, 1e-5, "disabled after merge"));
  }
}

TEST_CASE("adapter state as named tensors: save, load into a fresh model", "[inject][state]") {
  torch::manual_seed(11);
  FastNet a, b;
  copy_weights(*a, *b);
  auto aa = lora::inject(a, config());
  train(a, aa, 3);
  auto state = aa.state_dict();
  REQUIRE(state.size() == 18);
  REQUIRE(state.contains("layer.0.q_lin.lora_A.weight"));
  REQUIRE(state["layer.0.q_lin.lora_B.weight"].sizes() == torch::IntArrayRef({16, 4}));
  auto cfg = config();
  cfg.seed = 1234;  // another init, overwritten by the load
  auto ba = lora::inject(b, cfg);
  auto x = torch::randn({3, 16});
  ba.load_state_dict(state);
  REQUIRE(torch::equal(b->forward(x), a->forward(x)));

  // Wrong shapes and unknown keys fail before anything is copied.
  FastNet c;
  auto cfg8 = config(8);
  cfg8.rank_pattern = {{"classifier", 4}};
  auto ca = lora::inject(c, cfg8);
  auto before = ca.state_dict()["layer.0.q_lin.lora_A.weight"].clone();
  REQUIRE_THROWS_AS(ca.load_state_dict(state), lora::ShapeError);
  REQUIRE(torch::equal(ca.state_dict()["layer.0.q_lin.lora_A.weight"], before));
  auto extra = state;
  extra.insert("nope.lora_A.weight", torch::zeros({1}));
  REQUIRE_THROWS_AS(ba.load_state_dict(extra), lora::ShapeError);
  REQUIRE_NOTHROW(ba.load_state_dict(extra, /*strict=*/false));
}

TEST_CASE("targets: names, suffixes, regex, all-linear without the head, exclude", "[inject][targets]") {
  auto paths = [](const lora::ModelAdapter& a) {
    std::vector<std::string> p;
    for (const auto& l : a.layers()) p.push_back(l.path);
    return p;
  };
  SECTION("names and suffixes") {
    FastNet net;
    auto cfg = config();
    cfg.targets = {"q_lin", "layer.1.v_lin"};
    REQUIRE(paths(lora::inject(net, cfg)) == std::vector<std::string>{"layer.0.q_lin", "layer.1.q_lin", "layer.1.v_lin"});
  }
  SECTION("regex") {
    FastNet net;
    auto cfg = config();
    cfg.targets = {"re:layer\\.[0-9]+\\.lin[12]"};
    REQUIRE(paths(lora::inject(net, cfg)).size() == 4);
  }
  SECTION("all-linear without the output head, the default") {
    FastNet net;
    auto cfg = config();
    cfg.adapt_output_head = lora::Config().adapt_output_head;
    REQUIRE_FALSE(cfg.adapt_output_head);
    auto p = paths(lora::inject(net, cfg));
    REQUIRE(p.size() == 8);
    REQUIRE(std::find(p.begin(), p.end(), "classifier") == p.end());
  }
  SECTION("exclude") {
    FastNet net;
    auto cfg = config();
    cfg.exclude = {"lin1", "lin2"};
    REQUIRE(paths(lora::inject(net, cfg)).size() == 5);
  }
  SECTION("rank_pattern and alpha_pattern") {
    FastNet net;
    auto cfg = config();
    cfg.rank_pattern = {{"lin[12]", 2}};
    cfg.alpha_pattern = {{"classifier", 1}};
    auto a = lora::inject(net, cfg);
    for (const auto& l : a.layers()) {
      INFO(l.path);
      const bool ffn = l.path.find(".lin") != std::string::npos;
      CHECK(l.rank == (ffn ? 2 : 4));
      CHECK(l.scale == Approx(l.path == "classifier" ? 1.0 / 4 : 8.0 / l.rank));
    }
  }
}

TEST_CASE("keep_trainable leaves a module trainable and hands it to the optimizer", "[inject][keep]") {
  FastNet net;
  auto cfg = config();
  cfg.targets = {"q_lin"};
  cfg.keep_trainable = {"classifier", "norm"};
  auto a = lora::inject(net, cfg);
  CHECK(net->classifier->weight.requires_grad());
  CHECK(net->norm->weight.requires_grad());
  CHECK_FALSE(net->q[0]->weight.requires_grad());
  CHECK(a.trainable_parameter_count() == 2 * 4 * 32 + 16 * 4 + 4 + 16 + 16);
  cfg.adapter_name = "other";
  cfg.keep_trainable = {"classifer"};
  try {
    lora::inject(net, cfg);
    FAIL("no error");
  } catch (const lora::TargetError& e) {
    CHECK(std::string(e.what()).find("'classifier'") != std::string::npos);
  }
}

TEST_CASE("errors: bad targets name the closest layers, bad ranks and alphas are refused", "[inject][errors]") {
  FastNet net;
  auto cfg = config();
  SECTION("a misspelt target") {
    cfg.targets = {"q_lni"};
    try {
      lora::inject(net, cfg);
      FAIL("no error");
    } catch (const lora::TargetError& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("'q_lni'") != std::string::npos);
      CHECK(msg.find("layer.0.q_lin") != std::string::npos);
    }
  }
  SECTION("a target that is not a layer LoRA can adapt") {
    cfg.targets = {"norm"};
    try {
      lora::inject(net, cfg);
      FAIL("no error");
    } catch (const lora::TargetError& e) {
      CHECK(std::string(e.what()).find("not a layer LoRA can adapt") != std::string::npos);
      CHECK(std::string(e.what()).find("Linear, Embedding, Conv1d, Conv2d, Conv3d") != std::string::npos);
    }
  }
  SECTION("a misspelt exclude") {
    cfg.exclude = {"clasifier"};
    REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::TargetError);
  }
  SECTION("rank <= 0, non-finite alpha, bad dropout") {
    cfg.rank = 0;
    REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::ConfigError);
    cfg.rank = -3;
    REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::ConfigError);
    cfg.rank = 4;
    cfg.alpha = std::nan("");
    REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::ConfigError);
    cfg.alpha = std::numeric_limits<double>::infinity();
    REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::ConfigError);
    cfg.alpha = 8;
    cfg.dropout = 1.0;
    REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::ConfigError);
  }
  SECTION("rank > min(in, out) names the layer, and nothing is injected") {
    cfg.rank = 8;  // the classifier is 16 -> 4
    try {
      lora::inject(net, cfg);
      FAIL("no error");
    } catch (const lora::ConfigError& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("'classifier'") != std::string::npos);
      CHECK(msg.find("at most 4") != std::string::npos);
    }
    for (const auto& p : net->named_parameters()) CHECK(p.key().find("lora_") == std::string::npos);
  }
  SECTION("dropout on a plain torch::nn::Linear") {
    PlainNet plain;
    cfg.dropout = 0.1;
    try {
      lora::inject(plain, cfg);
      FAIL("no error");
    } catch (const lora::ConfigError& e) {
      CHECK(std::string(e.what()).find("lora::Linear") != std::string::npos);
    }
  }
  SECTION("the same adapter name twice") {
    lora::inject(net, cfg);
    REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::ConfigError);
  }
}

TEST_CASE("two named adapters on one model: choose, train, remove", "[inject][multi]") {
  for (int kind = 0; kind < 2; ++kind) {
    INFO((kind ? "plain" : "fast"));
    torch::manual_seed(12);
    PlainNet plain;
    FastNet fast;
    torch::nn::Module& net = kind ? static_cast<torch::nn::Module&>(*plain) : *fast;
    auto fwd = [&](torch::Tensor x) { return kind ? plain->forward(x) : fast->forward(x); };
    auto x = torch::randn({3, 16});
    auto base = fwd(x).detach();
    auto cfg = config();
    cfg.targets = {"q_lin"};
    auto a = lora::inject(net, cfg);
    randomize_b(a);
    auto ya = fwd(x).detach();
    cfg.adapter_name = "second";
    cfg.seed = 77;
    auto b = lora::inject(net, cfg);
    // Only the newest adapter is trainable.
    for (auto& p : a.parameters()) CHECK_FALSE(p.requires_grad());
    for (auto& p : b.parameters()) CHECK(p.requires_grad());
    randomize_b(b);
    auto both = fwd(x).detach();
    b.activate();
    auto yb = fwd(x).detach();
    a.activate();
    REQUIRE(lora_test::allclose(fwd(x), ya, 1e-6, 1e-6, "a alone again"));
    CHECK_FALSE(torch::allclose(both, ya));
    CHECK_FALSE(torch::allclose(yb, ya));
    b.remove();
    a.remove();
    REQUIRE(torch::equal(fwd(x), base));
  }
}

TEST_CASE("tied parameters are counted and optimised once", "[inject][tied]") {
  // One tensor registered under two names, as GPT-2's transformer.wte and lm_head.
  auto net = std::make_shared<torch::nn::Module>();
  auto emb = net->register_module("emb", torch::nn::Embedding(10, 6));
  auto sub = net->register_module("head", std::make_shared<torch::nn::Module>());
  sub->register_parameter("weight", emb->weight);
  REQUIRE(net->parameters().size() == 2);
  REQUIRE(lora::unique_parameters(*net).size() == 1);
  const auto named = lora::unique_named_parameters(*net);
  REQUIRE(named.size() == 1);
  CHECK(named.front().first == "emb.weight");  // the first name
  CHECK(named.front().second.is_same(emb->weight));
  net->register_module("lin", lora::Linear(6, 6));
  lora::Config cfg;
  cfg.rank = 2;
  auto a = lora::inject(*net, cfg);
  // 60 (tied, once) + 36 + 6 (lin) + 2 * (6 + 6) (adapter)
  CHECK(a.model_parameter_count() == 60 + 42 + 24);
}

TEST_CASE("rank above min(in, out) only when allowed, never for PiSSA/OLoRA", "[inject][rank]") {
  torch::manual_seed(13);
  FastNet net;
  auto x = torch::randn({2, 16});
  auto base = net->forward(x).detach();
  auto cfg = config(8);  // the classifier is 16 -> 4
  REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::ConfigError);
  cfg.allow_rank_above_min = true;
  cfg.init = lora::init::pissa();
  REQUIRE_THROWS_AS(lora::inject(net, cfg), lora::ConfigError);
  cfg.init = lora::init::uniform_zero();
  auto a = lora::inject(net, cfg);
  CHECK(a.layers().back().path == "classifier");
  CHECK(a.layers().back().rank == 8);
  REQUIRE(torch::equal(net->forward(x), base));
  // The seed study's count: r (in + out) per layer, also where r > out.
  CHECK(a.trainable_parameter_count() == 8 * (2 * ((16 + 16) * 2 + (16 + 32) + (32 + 16)) + (16 + 4)));
}

TEST_CASE("merged_state_dict: the base parameters with the adapters merged in, model unchanged", "[inject][merged]") {
  for (int kind = 0; kind < 2; ++kind) {
    INFO((kind ? "plain" : "fast"));
    torch::manual_seed(21);
    PlainNet plain;
    FastNet fast;
    torch::nn::Module& net = kind ? static_cast<torch::nn::Module&>(*plain) : *fast;
    auto cfg = config();
    cfg.targets = {"q_lin", "lin2"};
    auto a = lora::inject(net, cfg);
    randomize_b(a);
    std::map<std::string, torch::Tensor> before;
    for (const auto& p : net.named_parameters()) before[p.key()] = p.value().detach().clone();
    const auto merged = lora::merged_state_dict(net);
    // The model is left as it was, bit for bit (merged_state_dict works on copies).
    for (const auto& [k, t] : before) {
      INFO(k);
      CHECK(torch::equal(net.named_parameters()[k], t));
    }
    for (const auto& item : merged) CHECK(item.key().find("lora_") == std::string::npos);
    // The adapted weights are merged (B is random, so they differ from the base), the others not.
    REQUIRE(merged.contains("layer.0.q_lin.weight"));
    CHECK_FALSE(torch::allclose(merged["layer.0.q_lin.weight"], before.at("layer.0.q_lin.weight")));
    REQUIRE(merged.contains("layer.0.v_lin.weight"));
    CHECK(torch::equal(merged["layer.0.v_lin.weight"], before.at("layer.0.v_lin.weight")));
    a.merge();
    for (const auto& p : net.named_parameters()) {
      if (p.key().find("lora_") != std::string::npos) continue;
      INFO(p.key());
      REQUIRE(merged.contains(p.key()));
      CHECK(lora_test::allclose(merged[p.key()], p.value(), 1e-6, 1e-6, "merged_state_dict vs merge()"));
    }
    a.unmerge();
    // Unmerged, the weights are the ones before (within float rounding).
    for (const auto& [k, t] : before) CHECK(lora_test::allclose(net.named_parameters()[k], t, 1e-6, 1e-6, "unmerged"));
  }
}

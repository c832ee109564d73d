// The model stack of the examples (examples/common/models): configs, DistilBERT, GPT-2 and
// checkpoint loading, against outputs HF transformers computed (the fixtures' expected.json).
#include <models/checkpoint.hpp>
#include <models/distilbert.hpp>
#include <models/gpt2.hpp>
#include <models/hub_config.hpp>

#include <lora/lora.hpp>
#include <lora/safetensors.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>

#include "support.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using lora_test::contains;
using lora_test::error_of;
using lora_test::temp_dir;
using lora_test::json_tensor;
using lora_test::optional_json_tensor;

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}
std::vector<std::string> strings(const json& j) { return sorted(j.get<std::vector<std::string>>()); }

void write_text(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

const double kPi = std::acos(-1.0);


struct Tolerance {
  double rtol, atol;
};
Tolerance tolerance(const json& expected) {
  return {expected["tolerance"]["rtol"].get<double>(), expected["tolerance"]["atol"].get<double>()};
}

/// A scalar against its expected value; null expected means NaN.
bool scalar_close(double got, const json& want, Tolerance tol, const std::string& what) {
  if (want.is_null()) {
    std::cout << "  " << what << ": " << got << ", expected NaN (no target token)\n";
    return std::isnan(got);
  }
  return lora_test::allclose(torch::tensor(got), torch::tensor(want.get<double>()), tol.rtol, tol.atol, what);
}

/// Every case of a DistilBERT fixture through `run` (input_ids, mask) -> DistilBertOutput.
template <typename Run>
void check_distilbert_cases(const json& expected, Run run, bool check_logits) {
  const auto tol = tolerance(expected);
  const std::string fixture = expected["fixture"];
  REQUIRE_FALSE(expected["cases"].empty());
  torch::NoGradGuard no_grad;
  for (const auto& c : expected["cases"]) {
    const std::string name = fixture + "/" + c["name"].get<std::string>();
    const auto out = run(json_tensor(c["input_ids"], torch::kLong), optional_json_tensor(c["attention_mask"], torch::kLong));
    CHECK(lora_test::allclose(out.last_hidden_state, json_tensor(c["last_hidden_state"], torch::kFloat), tol.rtol,
                              tol.atol, name + " last_hidden_state"));
    if (check_logits && c.contains("logits"))
      CHECK(
          lora_test::allclose(out.logits, json_tensor(c["logits"], torch::kFloat), tol.rtol, tol.atol, name + " logits"));
    if (check_logits && c.contains("mlm_logits"))
      CHECK(lora_test::allclose(out.logits, json_tensor(c["mlm_logits"], torch::kFloat), tol.rtol, tol.atol,
                                name + " mlm_logits"));
  }
}

/// Every case of the GPT-2 fixture in `dir`: logits, and where the fixture has them (not in the
/// committed copies, whose vocabulary is cut down) batch loss, perplexity, per-sequence loss.
void check_gpt2_fixture(const fs::path& dir) {
  const auto expected = lora::read_json<nlohmann::json>(dir / "expected.json");
  const std::string fixture = expected["fixture"];
  const auto tol = tolerance(expected);
  auto m = models::load_gpt2(dir.string());
  const auto& report = m.report;
  CHECK(sorted(report.ignored) == strings(expected["loading"]["ignored_buffer_keys"]));
  CHECK(report.unused.empty());
  CHECK(report.missing.empty());
  REQUIRE(report.tied.size() == 1);
  CHECK(report.tied[0].first == "lm_head.weight");
  CHECK(report.tied[0].second == "transformer.wte.weight");
  CHECK(m.model->lm_head->weight.is_same(m.model->transformer->wte->weight));

  m.model->eval();
  torch::NoGradGuard no_grad;
  REQUIRE_FALSE(expected["cases"].empty());
  for (const auto& c : expected["cases"]) {
    const std::string name = fixture + "/" + c["name"].get<std::string>();
    const auto ids = json_tensor(c["input_ids"], torch::kLong);
    const auto logits = m.model(ids, optional_json_tensor(c["attention_mask"], torch::kLong));
    CHECK(lora_test::allclose(logits, json_tensor(c["logits"], torch::kFloat), tol.rtol, tol.atol, name + " logits"));
    if (!c.contains("loss")) continue;
    const auto labels = json_tensor(c["labels"], torch::kLong);

    const double loss = models::causal_lm_loss(logits, labels).item<double>();
    CHECK(scalar_close(loss, c["loss"], tol, name + " loss"));
    if (!c["perplexity"].is_null()) CHECK(scalar_close(std::exp(loss), c["perplexity"], tol, name + " perplexity"));
    const auto nll = models::causal_lm_nll(logits, labels);
    if (nll.tokens > 0) CHECK(std::abs(nll.nll / nll.tokens - loss) < 1e-5);
    for (int64_t b = 0; b < ids.size(0); ++b) {
      const double row = models::causal_lm_loss(logits.narrow(0, b, 1), labels.narrow(0, b, 1)).item<double>();
      CHECK(scalar_close(row, c["per_sequence_loss"][b], tol, name + " per_sequence_loss[" + std::to_string(b) + "]"));
    }
  }
}

/// The DistilBERT block computed by hand: erf or tanh GELU, LayerNorm eps `eps`.
torch::Tensor reference_block(models::DistilBertBlockImpl& block, const torch::Tensor& x, bool erf_gelu, double eps) {
  auto lin = [](const lora::Linear& l, const torch::Tensor& t) { return torch::matmul(t, l->weight.t()) + l->bias; };
  auto& a = *block.attention;
  const auto B = x.size(0), T = x.size(1), C = x.size(2), nh = a.n_heads, hd = C / nh;
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, nh, hd}).transpose(1, 2); };
  auto q = heads(lin(a.q_lin, x)), k = heads(lin(a.k_lin, x)), v = heads(lin(a.v_lin, x));
  auto att = torch::softmax(torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd)), -1);
  auto sa = lin(a.out_lin, torch::matmul(att, v).transpose(1, 2).reshape({B, T, C}));
  auto ln = [&](const torch::nn::LayerNorm& n, const torch::Tensor& t) {
    return torch::layer_norm(t, {C}, n->weight, n->bias, eps);
  };
  auto h = ln(block.sa_layer_norm, sa + x);
  auto f = lin(block.ffn->lin1, h);
  auto g = erf_gelu ? 0.5 * f * (1 + torch::erf(f / std::sqrt(2.0)))
                    : 0.5 * f * (1 + torch::tanh(std::sqrt(2.0 / kPi) * (f + 0.044715 * f.pow(3))));
  return ln(block.output_layer_norm, lin(block.ffn->lin2, g) + h);
}

/// 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), HF's NewGELUActivation.
torch::Tensor gelu_new_formula(const torch::Tensor& x) {
  return 0.5 * x * (1 + torch::tanh(std::sqrt(2.0 / kPi) * (x + 0.044715 * x.pow(3))));
}

models::DistilBertConfig tiny_distilbert() {
  models::DistilBertConfig c;
  c.vocab_size = 50;
  c.max_position_embeddings = 16;
  c.n_layers = 1;
  c.n_heads = 2;
  c.dim = 8;
  c.hidden_dim = 32;
  return c;
}

models::GPT2Config tiny_gpt2() {
  models::GPT2Config c;
  c.vocab_size = 50;
  c.n_positions = 16;
  c.n_embd = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_inner = 32;
  return c;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

/// The DistilBERT sequence-classification fixture in `dir` (shared or committed): loading and
/// every case's outputs.
void check_distilbert_seqcls(const fs::path& dir) {
  const auto expected = lora::read_json<nlohmann::json>(dir / "expected.json");
  auto m = models::load_distilbert(dir.string(), 0, 1);
  CHECK(m.config.num_labels == 4);
  CHECK(m.report.loaded.size() == expected["checkpoint"]["tensors"].size());
  CHECK(m.report.missing.empty());
  CHECK(m.report.unused.empty());
  m.model->eval();
  check_distilbert_cases(
      expected, [&](const auto& ids, const auto& mask) { return m.model(ids, mask); }, true);
}

}  // namespace

TEST_CASE("DistilBERT sequence classification matches HF on distilbert_seqcls_tiny", "[models][distilbert]") {
  const auto dir = lora_test::fixture("distilbert_seqcls_tiny");
  LORA_REQUIRE_PATH(dir);
  check_distilbert_seqcls(dir);
}

TEST_CASE("DistilBERT matches HF on the committed fixture (tests/fixtures, no shared data needed)",
          "[models][distilbert][committed]") {
  check_distilbert_seqcls(lora_test::committed_fixture("distilbert_seqcls_tiny"));
}

TEST_CASE("DistilBERT masked LM matches HF on distilbert_mlm_layout_tiny", "[models][distilbert]") {
  const auto dir = lora_test::fixture("distilbert_mlm_layout_tiny");
  LORA_REQUIRE_PATH(dir);
  const auto expected = lora::read_json<nlohmann::json>(dir / "expected.json");

  SECTION("as DistilBertForMaskedLM: vocab_projector tied to the word embeddings") {
    auto m = models::load_distilbert_mlm(dir.string());
    REQUIRE(m.report.tied.size() == 1);
    CHECK(m.report.tied[0].first == "vocab_projector.weight");
    CHECK(m.report.tied[0].second == expected["loading"]["tied"]["vocab_projector.weight"].get<std::string>());
    CHECK(m.report.unused.empty());
    CHECK(m.report.missing.empty());
    CHECK(m.model->vocab_layer_norm->options.eps() == 1e-12);
    m.model->eval();
    check_distilbert_cases(
        expected, [&](const auto& ids, const auto& mask) { return m.model(ids, mask); }, true);
  }
  SECTION("as DistilBertForSequenceClassification: MLM head unused, classification head initialised") {
    const auto& hf = expected["loading"]["as_DistilBertForSequenceClassification"];
    auto m = models::load_distilbert(dir.string(), 4, 7);
    CHECK(sorted(m.report.unused) == strings(hf["unexpected_keys_ignored"]));
    CHECK(sorted(m.report.missing) == strings(hf["missing_keys_randomly_initialized_by_hf"]));
    CHECK(m.report.initialized == m.report.missing);
    CHECK(m.report.tied.empty());
    CHECK(contains(m.report.summary(), "vocab_transform.weight"));
    m.model->eval();
    check_distilbert_cases(
        expected, [&](const auto& ids, const auto& mask) { return m.model(ids, mask); }, false);
  }
}

TEST_CASE("DistilBERT uses exact-erf GELU and LayerNorm eps 1e-12", "[models][distilbert]") {
  torch::manual_seed(0);
  const auto c = tiny_distilbert();
  models::DistilBertModel m(c);
  m->to(torch::kDouble);
  m->eval();
  torch::NoGradGuard no_grad;
  auto& block = *m->transformer->layer[0]->as<models::DistilBertBlockImpl>();
  for (auto& p : block.named_parameters())
    if (contains(p.key(), "bias")) p.value().zero_();  // so that a tiny input keeps a tiny variance
  block.ffn->lin1->weight.mul_(4);                     // pre-activations of a few units, where erf and tanh differ

  SECTION("block on an ordinary input: erf GELU, not tanh") {
    const auto x = torch::randn({2, 5, c.dim}, torch::kDouble);
    const auto out = block.forward(x, {});
    CHECK(lora_test::allclose(out, reference_block(block, x, true, 1e-12), 0, 1e-10, "block vs erf-GELU reference"));
    const double tanh_gap = max_abs_diff(out, reference_block(block, x, false, 1e-12));
    CAPTURE(tanh_gap);
    CHECK(tanh_gap > 1e-5);
  }
  SECTION("block on an input of tiny variance: eps 1e-12, not 1e-5") {
    const auto x = 1e-5 * torch::randn({2, 5, c.dim}, torch::kDouble);
    const auto out = block.forward(x, {});
    CHECK(
        lora_test::allclose(out, reference_block(block, x, true, 1e-12), 0, 1e-8, "tiny-variance block vs eps 1e-12"));
    const double eps_gap = max_abs_diff(out, reference_block(block, x, true, 1e-5));
    CAPTURE(eps_gap);
    CHECK(eps_gap > 0.1);
  }
  SECTION("embeddings LayerNorm on tiny embeddings: eps 1e-12") {
    auto& e = *m->embeddings;
    e.word_embeddings->weight.mul_(1e-5);
    e.position_embeddings->weight.mul_(1e-5);
    const auto ids = torch::tensor({{1, 2, 3, 4}}, torch::kLong);
    const auto sum = e.word_embeddings->weight.index_select(0, ids[0]) + e.position_embeddings->weight.narrow(0, 0, 4);
    auto ln = [&](double eps) {
      return torch::layer_norm(sum, {c.dim}, e.layer_norm->weight, e.layer_norm->bias, eps).unsqueeze(0);
    };
    const auto out = e.forward(ids);
    CHECK(lora_test::allclose(out, ln(1e-12), 0, 1e-8, "embeddings vs eps 1e-12"));
    CHECK(max_abs_diff(out, ln(1e-5)) > 0.1);
  }
}

TEST_CASE("DistilBERT attention mask hides padded keys", "[models][distilbert]") {
  torch::manual_seed(1);
  models::DistilBertModel m(tiny_distilbert());
  m->eval();
  torch::NoGradGuard no_grad;
  auto ids = torch::tensor({{1, 5, 6, 7, 0, 0}}, torch::kLong);
  const auto mask = torch::tensor({{1, 1, 1, 1, 0, 0}}, torch::kLong);
  auto changed = ids.clone();
  changed.index_put_({0, 4}, 9);  // a different token under the mask
  const auto a = m(ids, mask).narrow(1, 0, 4), b = m(changed, mask).narrow(1, 0, 4);
  CHECK(lora_test::allclose(a, b, 0, 1e-6, "unpadded positions, padded token changed"));
  CHECK(lora_test::allclose(a, m(ids.narrow(1, 0, 4), torch::Tensor()), 0, 1e-5,
                            "padded batch vs the unpadded sequence"));
}

TEST_CASE("GPT-2 matches HF on gpt2_hub_layout_tiny (bare keys, attn.bias buffers)", "[models][gpt2]") {
  const auto dir = lora_test::fixture("gpt2_hub_layout_tiny");
  LORA_REQUIRE_PATH(dir);
  check_gpt2_fixture(dir);
}

TEST_CASE("GPT-2 matches HF on distilgpt2_layout_tiny (transformer. prefix)", "[models][gpt2]") {
  const auto dir = lora_test::fixture("distilgpt2_layout_tiny");
  LORA_REQUIRE_PATH(dir);
  check_gpt2_fixture(dir);
}

TEST_CASE("GPT-2 matches HF on the committed fixture (tests/fixtures, no shared data needed)", "[models][gpt2][committed]") {
  check_gpt2_fixture(lora_test::committed_fixture("gpt2_hub_layout_tiny"));
}

TEST_CASE("GPT-2 attention is causal", "[models][gpt2]") {
  torch::manual_seed(2);
  models::GPT2LMHeadModel m(tiny_gpt2());
  m->eval();
  torch::NoGradGuard no_grad;
  const auto ids = torch::randint(0, 50, {2, 10}, torch::kLong);
  auto changed = ids.clone();
  changed.select(1, 7).add_(1).remainder_(50);
  const auto a = m(ids), b = m(changed);
  CHECK(lora_test::allclose(a.narrow(1, 0, 7), b.narrow(1, 0, 7), 0, 1e-6, "logits before the changed token"));
  CHECK(max_abs_diff(a.narrow(1, 7, 3), b.narrow(1, 7, 3)) > 1e-4);
}

TEST_CASE("GPT-2 uses gelu_new, the tanh approximation", "[models][gpt2]") {
  const auto x = torch::linspace(-6, 6, 241, torch::kDouble);
  CHECK(lora_test::allclose(models::activate(models::Activation::gelu_tanh, x), gelu_new_formula(x), 0, 1e-12,
                            "activate(gelu_tanh) vs the gelu_new formula"));
  CHECK(max_abs_diff(models::activate(models::Activation::gelu, x), gelu_new_formula(x)) > 1e-4);

  torch::manual_seed(3);
  models::GPT2MLP mlp(tiny_gpt2());
  mlp->to(torch::kDouble);
  mlp->eval();
  torch::NoGradGuard no_grad;
  mlp->c_fc->weight.mul_(4);
  const auto h = torch::randn({3, 8}, torch::kDouble);
  const auto pre = torch::matmul(h, mlp->c_fc->weight.t()) + mlp->c_fc->bias;
  auto ref = [&](const torch::Tensor& act) { return torch::matmul(act, mlp->c_proj->weight.t()) + mlp->c_proj->bias; };
  CHECK(lora_test::allclose(mlp(h), ref(gelu_new_formula(pre)), 0, 1e-12, "GPT-2 MLP vs gelu_new reference"));
  CHECK(max_abs_diff(mlp(h), ref(torch::gelu(pre))) > 1e-6);
}

TEST_CASE("fake_gpt2, a GPT-2 saved by HF transformers, loads and runs", "[models][gpt2]") {
  const auto dir = lora_test::data("checkpoints/fake_gpt2");
  LORA_REQUIRE_PATH(dir);
  auto m = models::load_gpt2(dir.string());
  CHECK(m.config.n_embd == 2);
  CHECK(m.config.n_inner == 8);
  const lora::safetensors::File file((dir / "model.safetensors").string());
  CHECK(m.report.loaded.size() + m.report.ignored.size() == file.tensors().size());
  CHECK(m.report.unused.empty());
  REQUIRE(m.report.tied.size() == 1);
  CHECK(m.report.tied[0].first == "lm_head.weight");
  auto& attn = *m.model->transformer->h[0]->as<models::GPT2BlockImpl>()->attn;
  CHECK(torch::equal(attn.c_attn->weight, file.tensor("transformer.h.0.attn.c_attn.weight").t()));

  m.model->eval();
  torch::NoGradGuard no_grad;
  const auto ids = torch::tensor({{50256, 464, 3290, 318, 257}}, torch::kLong);
  const auto logits = m.model(ids);
  CHECK(logits.sizes() == torch::IntArrayRef({1, 5, 50257}));
  CHECK(torch::isfinite(logits).all().item<bool>());
  CHECK(std::isfinite(models::causal_lm_loss(logits, ids).item<double>()));
}

TEST_CASE("bert_tiniest, a BERT checkpoint, is refused by the DistilBERT loader", "[models][distilbert]") {
  const auto dir = lora_test::data("checkpoints/bert_tiniest");
  LORA_REQUIRE_PATH(dir);
  const auto config = models::read_distilbert_config((dir / "config.json").string());
  CHECK(config.model_type == "bert");
  const lora::safetensors::File file((dir / "model.safetensors").string());
  CHECK(file.tensors().size() == 26);

  const auto by_config = error_of<models::HubConfigError>([&] { models::load_distilbert(dir.string(), 2, 0); });
  INFO(by_config);
  CHECK(contains(by_config, "\"bert\""));
  CHECK(contains(by_config, "DistilBERT"));
  CHECK(contains(by_config, (dir / "config.json").string()));

  models::DistilBertForSequenceClassification model(tiny_distilbert());
  const auto by_keys = error_of<examples::FileError>(
      [&] { models::load_weights(*model, file, models::distilbert_layout(tiny_distilbert(), 0)); });
  INFO(by_keys);
  CHECK(contains(by_keys, "does not hold a DistilBERT model"));
  CHECK(contains(by_keys, "bert.embeddings"));
}

TEST_CASE("A shape mismatch names the key and both shapes", "[models][checkpoint]") {
  SECTION("a head of another size") {
    const auto dir = lora_test::fixture("distilbert_seqcls_tiny");
    LORA_REQUIRE_PATH(dir);
    const auto msg = error_of<examples::DataError>([&] { models::load_distilbert(dir.string(), 3, 0); });
    INFO(msg);
    CHECK(contains(msg, "'classifier.bias'"));
    CHECK(contains(msg, "[4]"));
    CHECK(contains(msg, "[3]"));
  }
  SECTION("a Conv1D weight, stored (in, out)") {
    const auto dir = temp_dir("shape");
    torch::OrderedDict<std::string, torch::Tensor> tensors;
    tensors.insert("transformer.h.0.mlp.c_fc.weight", torch::zeros({8, 16}));
    lora::safetensors::save((dir / "model.safetensors").string(), tensors);
    models::GPT2LMHeadModel model(tiny_gpt2());
    const auto msg = error_of<examples::DataError>([&] {
      models::load_weights(*model, lora::safetensors::File((dir / "model.safetensors").string()),
                           models::gpt2_layout());
    });
    INFO(msg);
    CHECK(contains(msg, "transformer.h.0.mlp.c_fc.weight"));
    CHECK(contains(msg, "[8, 16]"));
    CHECK(contains(msg, "[32, 8]"));
    fs::remove_all(dir);
  }
}

TEST_CASE("A missing classification head is initialised from the seed", "[models][checkpoint]") {
  const auto dir = lora_test::fixture("distilbert_mlm_layout_tiny");
  LORA_REQUIRE_PATH(dir);
  auto a = models::load_distilbert(dir.string(), 4, 7), b = models::load_distilbert(dir.string(), 4, 7),
       c = models::load_distilbert(dir.string(), 4, 8);
  const std::vector<std::string> head = {"pre_classifier.weight", "pre_classifier.bias", "classifier.weight",
                                         "classifier.bias"};
  CHECK(a.report.initialized == head);
  CHECK(torch::equal(a.model->pre_classifier->weight, b.model->pre_classifier->weight));
  CHECK(torch::equal(a.model->classifier->weight, b.model->classifier->weight));
  CHECK(!torch::equal(a.model->pre_classifier->weight, c.model->pre_classifier->weight));
  CHECK(!torch::equal(a.model->classifier->weight, c.model->classifier->weight));
  CHECK(a.model->classifier->bias.abs().max().item<double>() == 0.0);
  CHECK(a.model->pre_classifier->bias.abs().max().item<double>() == 0.0);
  const double sd = a.model->pre_classifier->weight.std().item<double>();  // 1024 draws of N(0, 0.02)
  CAPTURE(sd);
  CHECK(std::abs(sd - a.config.initializer_range) < 0.003);
}

TEST_CASE("Loading fills base weights only and leaves LoRA adapters alone", "[models][checkpoint]") {
  const auto dir = lora_test::fixture("distilbert_seqcls_tiny");
  LORA_REQUIRE_PATH(dir);
  const auto config = models::read_distilbert_config((dir / "config.json").string());
  models::DistilBertForSequenceClassification model(config);
  auto& q = *model->distilbert->transformer->layer[0]->as<models::DistilBertBlockImpl>()->attention->q_lin;
  lora::LayerAdapterSpec spec;
  spec.rank = 4;
  auto& adapter = q.add_adapter("default", spec);
  const auto A = adapter.A.clone();
  const auto report = models::load_weights(*model, lora::safetensors::File((dir / "model.safetensors").string()),
                                           models::distilbert_layout(config, 0));
  CHECK(report.missing.empty());
  CHECK(report.loaded.size() == 40);
  CHECK(torch::equal(q.adapter("default").A, A));
}

TEST_CASE("F16 and BF16 checkpoints load into a float32 model", "[models][checkpoint]") {
  const auto src = lora_test::fixture("gpt2_hub_layout_tiny");
  LORA_REQUIRE_PATH(src);
  const auto dir = temp_dir("half");
  fs::copy_file(src / "config.json", dir / "config.json");
  torch::OrderedDict<std::string, torch::Tensor> half;
  int i = 0;
  for (const auto& item : lora::safetensors::load((src / "model.safetensors").string())) {
    const bool buffer = contains(item.key(), "attn.bias");  // ignored whatever its dtype: store it as bool
    half.insert(item.key(), item.value().to(buffer ? torch::kBool : (i++ % 2 ? torch::kHalf : torch::kBFloat16)));
  }
  lora::safetensors::save((dir / "model.safetensors").string(), half);

  auto m = models::load_gpt2(dir.string());
  CHECK(m.report.ignored.size() == 2);
  const auto& wte = m.model->transformer->wte->weight;
  CHECK(wte.scalar_type() == torch::kFloat);
  CHECK(torch::equal(wte, half["wte.weight"].to(torch::kFloat)));
  fs::remove_all(dir);
}

TEST_CASE("A checkpoint folder without its files is refused, naming each one", "[models][checkpoint]") {
  const auto dir = temp_dir("empty");
  const auto msg = error_of<examples::FileError>([&] { models::load_gpt2(dir.string()); });
  INFO(msg);
  CHECK(contains(msg, (dir / "config.json").string()));
  CHECK(contains(msg, (dir / "model.safetensors").string()));
  fs::remove_all(dir);
}

TEST_CASE("config.json: HF defaults for absent fields, clear errors for bad ones", "[models][config]") {
  const auto dir = temp_dir("config");
  const auto path = (dir / "config.json").string();

  SECTION("GPT-2 defaults; n_inner null is 4 * n_embd") {
    write_text(path, R"({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_inner": null})");
    const auto c = models::read_gpt2_config(path);
    CHECK(c.n_inner == 256);
    CHECK(c.vocab_size == 50257);
    CHECK(c.n_positions == 1024);
    CHECK(c.n_layer == 12);
    CHECK(c.activation_function == models::Activation::gelu_tanh);
    CHECK(c.layer_norm_epsilon == 1e-5);
    CHECK(c.scale_attn_weights);
    CHECK(c.bos_token_id == 50256);
    CHECK(c.eos_token_id == 50256);
    models::require_gpt2(c);
  }
  SECTION("DistilBERT defaults; num_labels from id2label") {
    write_text(path, R"({"model_type": "distilbert", "id2label": {"0": "a", "1": "b", "2": "c"}})");
    const auto c = models::read_distilbert_config(path);
    CHECK(c.num_labels == 3);
    CHECK(c.vocab_size == 30522);
    CHECK(c.max_position_embeddings == 512);
    CHECK(c.n_layers == 6);
    CHECK(c.n_heads == 12);
    CHECK(c.dim == 768);
    CHECK(c.hidden_dim == 3072);
    CHECK(c.activation == models::Activation::gelu);
    CHECK(c.seq_classif_dropout == 0.2);
    CHECK(c.pad_token_id == 0);
    models::require_distilbert(c);
    write_text(path, "{}");
    CHECK(models::read_distilbert_config(path).num_labels == 2);
  }
  SECTION("a field of the wrong type") {
    write_text(path, R"({"model_type": "distilbert", "dim": "big"})");
    const auto msg = error_of<models::HubConfigError>([&] { models::read_distilbert_config(path); });
    INFO(msg);
    CHECK(contains(msg, path));
    CHECK(contains(msg, "\"dim\""));
    CHECK(contains(msg, "\"big\""));
    CHECK(contains(msg, "768"));
  }
  SECTION("an unsupported activation") {
    write_text(path, R"({"model_type": "gpt2", "activation_function": "swish"})");
    const auto msg = error_of<models::HubConfigError>([&] { models::read_gpt2_config(path); });
    INFO(msg);
    CHECK(contains(msg, "\"swish\""));
    CHECK(contains(msg, "gelu_new"));
  }
  SECTION("another architecture parses but is refused") {
    write_text(path, R"({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})");
    const auto c = models::read_distilbert_config(path);
    const auto msg = error_of<models::HubConfigError>([&] { models::require_distilbert(c); });
    INFO(msg);
    CHECK(contains(msg, "GPT2LMHeadModel"));
  }
  fs::remove_all(dir);
}

// The DistilBERT attention core and dropout: the optimised paths equal the textbook formulas,
// forward and backward (docs/performance.md says what each saves).
namespace {
/// HF's attention, written out: softmax(masked_fill(q k^T / sqrt(hd), mask, lowest)) v.
torch::Tensor attention_reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                  const torch::Tensor& masked, int64_t nh) {
  const auto B = q.size(0), T = q.size(1), C = q.size(2), hd = C / nh;
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, nh, hd}).transpose(1, 2); };
  auto scores = torch::matmul(heads(q), heads(k).transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
  if (masked.defined()) scores = scores.masked_fill(masked, std::numeric_limits<double>::lowest());
  return torch::matmul(torch::softmax(scores, -1), heads(v)).transpose(1, 2).reshape({B, T, C});
}
}  // namespace

TEST_CASE("DistilBERT's attention core equals softmax(q k^T / sqrt(hd) + mask) v, forward and gradients", "[models][fused]") {
  torch::manual_seed(20);
  torch::nn::Dropout dropout(0.1);
  dropout->eval();  // the formula has no dropout
  struct Shape {
    int64_t B, T, C, nh;
  };
  for (auto sh : {Shape{3, 7, 24, 4}, Shape{2, 1, 24, 4}, Shape{2, 5, 8, 1}}) {
    auto o = torch::TensorOptions().dtype(torch::kDouble);
    auto q = torch::randn({sh.B, sh.T, sh.C}, o).requires_grad_(), k = torch::randn({sh.B, sh.T, sh.C}, o).requires_grad_(),
         v = torch::randn({sh.B, sh.T, sh.C}, o).requires_grad_();
    auto attention_mask = torch::ones({sh.B, sh.T}, torch::kLong);
    if (sh.T > 4) attention_mask.index_put_({0, torch::indexing::Slice(4)}, 0);
    if (sh.B > 2) attention_mask.index_put_({2, torch::indexing::Slice(1)}, 0);  // only the first key left
    auto masked = (attention_mask == 0).view({sh.B, 1, 1, sh.T});
    // The model's helper: the same mask when a key is padded, none for a batch without padding.
    const auto helper = models::detail::padding_keys(attention_mask);
    REQUIRE(helper.defined() == masked.any().item<bool>());
    if (helper.defined()) REQUIRE(torch::equal(helper, masked));
    REQUIRE_FALSE(models::detail::padding_keys(torch::ones({sh.B, sh.T}, torch::kLong)).defined());
    for (bool with_mask : {true, false}) {
      const auto m = with_mask ? masked : torch::Tensor();
      auto q_in = q * 1.0;  // a projection output, as in the model
      auto q_before = q_in.detach().clone();
      auto y = models::detail::attend(q_in, k, v, m, sh.nh, dropout);
      REQUIRE(torch::equal(q_in.detach(), q_before));  // the input projection is left alone
      auto ref = attention_reference(q, k, v, m, sh.nh);
      REQUIRE(lora_test::allclose(y, ref, 1e-10, 1e-10, with_mask ? "attention, masked" : "attention, no mask"));
      auto G = torch::randn_like(ref);
      auto g1 = torch::autograd::grad({(y * G).sum()}, {q, k, v});
      auto g2 = torch::autograd::grad({(ref * G).sum()}, {q, k, v});
      for (size_t i = 0; i < 3; ++i) REQUIRE(lora_test::allclose(g1[i], g2[i], 1e-10, 1e-10, "attention grad"));
      torch::NoGradGuard no_grad;  // the inference path takes the same code
      REQUIRE(lora_test::allclose(models::detail::attend(q * 1.0, k, v, m, sh.nh, dropout), ref.detach(), 1e-10, 1e-10,
                                  "attention, no grad"));
    }
  }

  // Training mode: dropout on the attention weights is applied (a fresh mask per call).
  dropout->train();
  auto q = torch::randn({2, 6, 8}), k = torch::randn({2, 6, 8}), v = torch::randn({2, 6, 8});
  auto a = models::detail::attend(q, k, v, torch::Tensor(), 2, dropout);
  auto b = models::detail::attend(q, k, v, torch::Tensor(), 2, dropout);
  REQUIRE_FALSE(torch::allclose(a, b));
}

TEST_CASE("DistilBERT's fast dropout keeps 1 - p of the values, scaled, and routes gradients through the mask", "[models][fused]") {
  torch::nn::Dropout module(0.1);
  module->train();
  torch::manual_seed(22);
  auto x = (torch::rand({64, 128, 128}) + 0.5).requires_grad_();  // no zeros: y != 0 marks a kept value
  auto y = models::detail::dropout(x, module);
  auto kept = (y != 0);
  const double frac = kept.to(torch::kDouble).mean().item<double>();
  CHECK(std::abs(frac - 0.9) < 0.002);  // 1M values: the standard error is 0.0003
  // Kept values are x / (1 - p), exactly as torch::dropout scales them.
  REQUIRE(lora_test::allclose(y.masked_select(kept), x.masked_select(kept) / 0.9f, 1e-6, 0, "kept values"));
  // No pattern along the last dimension: each of its 128 positions keeps ~90%.
  const auto per_col = kept.to(torch::kDouble).mean(std::vector<int64_t>{0, 1});
  const bool columns_ok = ((per_col - 0.9).abs() < 0.02).all().item<bool>();
  CHECK(columns_ok);
  auto G = torch::randn_like(y);
  auto g = torch::autograd::grad({(y * G).sum()}, {x})[0];
  REQUIRE(lora_test::allclose(g, G * kept.to(torch::kFloat) / 0.9f, 1e-6, 1e-7, "dropout gradient"));

  // Reproducible under torch::manual_seed; a fresh mask each call.
  torch::manual_seed(5);
  auto a = models::detail::dropout(x.detach(), module);
  auto b = models::detail::dropout(x.detach(), module);
  torch::manual_seed(5);
  auto a2 = models::detail::dropout(x.detach(), module);
  REQUIRE(torch::equal(a, a2));
  REQUIRE_FALSE(torch::equal(a, b));
  // Two masks agree about as often as independent ones would: 0.9^2 + 0.1^2 = 0.82.
  const double agree = ((a != 0) == (b != 0)).to(torch::kDouble).mean().item<double>();
  CHECK(std::abs(agree - 0.82) < 0.003);

  // Eval mode and p = 0 are the identity; other dtypes take torch's own dropout.
  module->eval();
  REQUIRE(models::detail::dropout(x, module).is_same(x));
  module->train();
  torch::nn::Dropout none(0.0);
  none->train();
  REQUIRE(models::detail::dropout(x, none).is_same(x));
  auto xd = torch::rand({1000, 100}, torch::kDouble) + 0.5;
  const double frac_d = (models::detail::dropout(xd, module) != 0).to(torch::kDouble).mean().item<double>();
  CHECK(std::abs(frac_d - 0.9) < 0.005);
}

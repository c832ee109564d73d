// PEFT adapters and merged exports on the example models (DistilBERT, GPT-2): the PEFT fixture
// against HF's logits, save/load round trips, merged checkpoints read back, lora_inspect --adapter.
#include <models/checkpoint.hpp>
#include <models/distilbert.hpp>
#include <models/export.hpp>
#include <models/gpt2.hpp>

#include <lora/lora.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "support.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using lora_test::temp_dir;
using lora_test::json_tensor;
using lora_test::optional_json_tensor;

/// Random B (and DoRA magnitudes, and kept parameters), so the adapter matters.
void randomize(const lora::ModelAdapter& a, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard g;
  for (auto& b : a.b_parameters()) b.normal_(0, 0.2);
  for (auto& m : a.magnitude_parameters()) m.mul_(1 + 0.2 * torch::randn_like(m));
  for (const auto& kv : a.kept_parameters()) kv.second.add_(0.05 * torch::randn_like(kv.second));
}

/// Inputs of a fixture's cases: (input_ids, attention_mask).
std::vector<std::pair<torch::Tensor, torch::Tensor>> inputs(const fs::path& dir) {
  std::vector<std::pair<torch::Tensor, torch::Tensor>> out;
  const auto expected = lora::read_json<nlohmann::json>(dir / "expected.json");
  for (const auto& c : expected["cases"])
    out.emplace_back(json_tensor(c["input_ids"], torch::kLong), optional_json_tensor(c["attention_mask"], torch::kLong));
  return out;
}

/// Runs lora_inspect with `args`, capturing stdout.
lora_test::ProgramRun inspect(const std::string& args) {
  return lora_test::run_program(std::string(LORA_INSPECT_PATH) + " " + args);
}

/// The PEFT fixture in `dir` (shared or committed): the adapter loads, the model reproduces
/// PEFT's logits (and its loss where the fixture has it: not in the committed copy, whose
/// vocabulary is cut down), and merged it computes the same.
void check_peft_fixture(const fs::path& dir) {
  const auto expected = lora::read_json<nlohmann::json>(dir / "expected.json");
  const double rtol = expected["tolerance"]["rtol"], atol = expected["tolerance"]["atol"];
  auto m = models::load_gpt2(dir.string());
  lora::peft::LoadOptions opts;
  opts.mapping = models::gpt2_peft_mapping();
  const auto a = lora::peft::load(*m.model, dir.string(), opts);
  REQUIRE(a.layers().size() == 2);
  for (const auto& l : a.layers()) {
    CHECK(l.rank == 4);
    CHECK(l.scale == Approx(expected["lora"]["scaling"].get<double>()));
  }
  m.model->eval();
  torch::NoGradGuard no_grad;
  REQUIRE_FALSE(expected["cases"].empty());
  for (const auto& c : expected["cases"]) {
    const std::string name = c["name"];
    const auto logits = m.model(json_tensor(c["input_ids"], torch::kLong), optional_json_tensor(c["attention_mask"], torch::kLong));
    CHECK(lora_test::allclose(logits, json_tensor(c["logits"], torch::kFloat), rtol, atol, "fixture " + name + " logits"));
    if (!c.contains("loss")) continue;
    const double loss = models::causal_lm_loss(logits, json_tensor(c["labels"], torch::kLong)).item<double>();
    CHECK(loss == Approx(c["loss"].get<double>()).epsilon(1e-4));
  }
  // Merged, the model computes the same.
  a.merge();
  const auto& c0 = expected["cases"][0];
  CHECK(lora_test::allclose(
      m.model(json_tensor(c0["input_ids"], torch::kLong), optional_json_tensor(c0["attention_mask"], torch::kLong)),
      json_tensor(c0["logits"], torch::kFloat), rtol, atol, "fixture merged"));
}

}  // namespace

TEST_CASE("the PEFT fixture: a GPT-2 adapter saved by PEFT reproduces PEFT's logits", "[peft][fixture]") {
  const auto dir = lora_test::fixture("gpt2_lora_adapter_tiny");
  LORA_REQUIRE_PATH(dir / "expected.json");
  check_peft_fixture(dir);
}

TEST_CASE("the committed PEFT fixture (tests/fixtures, no shared data needed) reproduces PEFT's logits",
          "[peft][fixture][committed]") {
  check_peft_fixture(lora_test::committed_fixture("gpt2_lora_adapter_tiny"));
}

TEST_CASE("PEFT round trip on DistilBERT and GPT-2: save, load into a fresh model, same outputs", "[peft]") {
  SECTION("DistilBERT for sequence classification (LoRA and DoRA, classifier kept trainable)") {
    const auto dir = lora_test::fixture("distilbert_seqcls_tiny");
    LORA_REQUIRE_PATH(dir);
    for (const bool dora : {false, true}) {
      INFO("dora " << dora);
      auto m = models::load_distilbert(dir.string());
      lora::Config cfg;
      cfg.targets = {"q_lin", "v_lin", "lin1"};
      cfg.rank = 4;
      cfg.alpha = 16;
      cfg.rank_pattern = {{"lin1", 2}};
      cfg.keep_trainable = {"classifier"};
      cfg.use_dora = dora;
      cfg.dropout = 0.1;
      auto a = lora::inject(*m.model, cfg);
      randomize(a, 3);
      m.model->eval();
      const auto out = temp_dir(dora ? "distilbert_dora" : "distilbert");
      lora::peft::SaveOptions so;
      so.mapping = models::distilbert_peft_mapping();
      so.task_type = "SEQ_CLS";
      lora::peft::save(a, out.string(), so);
      const auto c = lora::read_json<nlohmann::json>(out / "adapter_config.json");
      CHECK(c["fan_in_fan_out"] == false);
      CHECK(c["task_type"] == "SEQ_CLS");
      CHECK(c["modules_to_save"] == json::array({"classifier"}));
      CHECK(c["use_dora"] == dora);
      const lora::safetensors::File f((out / "adapter_model.safetensors").string());
      CHECK(f.contains("base_model.model.distilbert.transformer.layer.0.attention.q_lin.lora_A.weight"));
      CHECK(f.contains("base_model.model.classifier.weight"));
      CHECK(f.contains("base_model.model.distilbert.transformer.layer.1.ffn.lin1.lora_magnitude_vector") == dora);

      auto fresh = models::load_distilbert(dir.string());
      lora::peft::LoadOptions lo;
      lo.mapping = models::distilbert_peft_mapping();
      lora::peft::load(*fresh.model, out.string(), lo);
      fresh.model->eval();
      torch::NoGradGuard no_grad;
      for (const auto& [ids, mask] : inputs(dir)) {
        const auto want = m.model(ids, mask).logits;
        CHECK(lora_test::allclose(fresh.model(ids, mask).logits, want, 0, 0, "DistilBERT round trip"));
      }
      fs::remove_all(out);
    }
  }
  SECTION("GPT-2 (Conv1D layers: fan_in_fan_out) with rsLoRA") {
    const auto dir = lora_test::fixture("gpt2_hub_layout_tiny");
    LORA_REQUIRE_PATH(dir);
    auto m = models::load_gpt2(dir.string());
    lora::Config cfg;
    cfg.targets = {"c_attn", "c_proj", "c_fc"};
    cfg.rank = 8;
    cfg.alpha = 16;
    cfg.scaling = lora::scaling::alpha_over_sqrt_rank();
    auto a = lora::inject(*m.model, cfg);
    randomize(a, 4);
    m.model->eval();
    const auto out = temp_dir("gpt2");
    lora::peft::SaveOptions so;
    so.mapping = models::gpt2_peft_mapping();
    so.task_type = "CAUSAL_LM";
    so.base_model_name_or_path = "gpt2";
    lora::peft::save(a, out.string(), so);
    const auto c = lora::read_json<nlohmann::json>(out / "adapter_config.json");
    CHECK(c["fan_in_fan_out"] == true);
    CHECK(c["use_rslora"] == true);
    CHECK(c["target_modules"] == json::array({"c_attn", "c_proj", "c_fc"}));
    const lora::safetensors::File f((out / "adapter_model.safetensors").string());
    // Conv1D or not, A is (r, in) and B (out, r).
    CHECK(f.info("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight").shape == std::vector<int64_t>{8, 32});
    CHECK(f.info("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight").shape == std::vector<int64_t>{96, 8});
    CHECK(f.info("base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight").shape == std::vector<int64_t>{128, 8});

    auto fresh = models::load_gpt2(dir.string());
    lora::peft::LoadOptions lo;
    lo.mapping = models::gpt2_peft_mapping();
    const auto b = lora::peft::load(*fresh.model, out.string(), lo);
    CHECK(b.layers().size() == 2 * 4);
    fresh.model->eval();
    torch::NoGradGuard no_grad;
    for (const auto& [ids, mask] : inputs(dir))
      CHECK(lora_test::allclose(fresh.model(ids, mask), m.model(ids, mask), 0, 0, "GPT-2 round trip"));
    fs::remove_all(out);
  }
}

TEST_CASE("merged export: a Hub checkpoint that loads back with the adapted outputs", "[peft][export]") {
  SECTION("GPT-2: Conv1D weights back to (in, out), lm_head tied unless adapted") {
    const auto dir = lora_test::fixture("gpt2_hub_layout_tiny");
    LORA_REQUIRE_PATH(dir);
    for (const bool head : {false, true}) {
      INFO("lm_head adapted " << head);
      auto m = models::load_gpt2(dir.string());
      lora::Config cfg;
      cfg.targets = {"c_attn", "mlp.c_proj"};
      if (head) cfg.targets.push_back("lm_head");
      cfg.allow_untied_weights = head;  // lm_head's weight is wte's: the export unties them
      cfg.rank = 4;
      cfg.alpha = 8;
      cfg.use_dora = !head;  // both kinds of merge
      auto a = lora::inject(*m.model, cfg);
      randomize(a, 6);
      m.model->eval();
      const auto W = m.model->transformer->h[0]->as<models::GPT2BlockImpl>()->attn->c_attn->weight.detach().clone();
      const auto out = temp_dir(head ? "export_gpt2_head" : "export_gpt2");
      const auto report = models::export_merged(m.model, out.string());
      CHECK(report.untied == head);
      CHECK(report.merged.size() == (head ? 5u : 4u));
      // The model is left as it was.
      CHECK(torch::equal(m.model->transformer->h[0]->as<models::GPT2BlockImpl>()->attn->c_attn->weight, W));
      const lora::safetensors::File f((out / "model.safetensors").string());
      CHECK(f.metadata().at("format") == "pt");
      CHECK(f.info("transformer.h.0.attn.c_attn.weight").shape == std::vector<int64_t>{32, 96});  // (in, out)
      CHECK(f.info("transformer.h.1.mlp.c_proj.weight").shape == std::vector<int64_t>{128, 32});
      CHECK(f.contains("transformer.wte.weight"));
      CHECK(f.contains("lm_head.weight") == head);
      for (const auto& t : f.tensors()) CHECK(t.name.find("lora_") == std::string::npos);
      const auto config = lora::read_json<nlohmann::json>(out / "config.json");
      CHECK(config["model_type"] == "gpt2");
      CHECK(config["architectures"] == json::array({"GPT2LMHeadModel"}));
      CHECK(config["tie_word_embeddings"] == !head);
      CHECK(config["n_embd"] == 32);

      auto back = models::load_gpt2(out.string());
      back.model->eval();
      CHECK(back.report.unused.empty());
      torch::NoGradGuard no_grad;
      for (const auto& [ids, mask] : inputs(dir))
        CHECK(lora_test::allclose(back.model(ids, mask), m.model(ids, mask), 1e-4, 1e-4, "GPT-2 merged export"));
      fs::remove_all(out);
    }
  }
  SECTION("DistilBERT: every adapted layer merged, classifier kept") {
    const auto dir = lora_test::fixture("distilbert_seqcls_tiny");
    LORA_REQUIRE_PATH(dir);
    auto m = models::load_distilbert(dir.string());
    lora::Config cfg;
    cfg.rank = 4;
    cfg.keep_trainable = {"classifier"};
    cfg.adapt_output_head = true;
    auto a = lora::inject(*m.model, cfg);  // all-linear, head included
    randomize(a, 7);
    m.model->eval();
    const auto out = temp_dir("export_distilbert");
    models::export_merged(m.model, out.string());
    const auto config = lora::read_json<nlohmann::json>(out / "config.json");
    CHECK(config["id2label"].size() == 4);
    CHECK(config["architectures"] == json::array({"DistilBertForSequenceClassification"}));
    auto back = models::load_distilbert(out.string());
    back.model->eval();
    CHECK(back.report.initialized.empty());
    torch::NoGradGuard no_grad;
    for (const auto& [ids, mask] : inputs(dir))
      CHECK(lora_test::allclose(back.model(ids, mask).logits, m.model(ids, mask).logits, 1e-4, 1e-4,
                                "DistilBERT merged export"));
    // The same outputs as merging in memory.
    const auto [ids, mask] = inputs(dir)[0];
    const auto before = m.model(ids, mask).logits;
    a.merge();
    CHECK(lora_test::allclose(m.model(ids, mask).logits, before, 1e-4, 1e-4, "in-memory merge"));
    fs::remove_all(out);
  }
}

TEST_CASE("lora_inspect forward --adapter reproduces the PEFT fixture", "[peft][inspect]") {
  const auto dir = lora_test::fixture("gpt2_lora_adapter_tiny");
  LORA_REQUIRE_PATH(dir / "expected.json");
  const auto expected = lora::read_json<nlohmann::json>(dir / "expected.json");
  const double rtol = expected["tolerance"]["rtol"], atol = expected["tolerance"]["atol"];
  for (const auto& c : expected["cases"]) {
    INFO(c["name"]);
    const auto in = temp_dir("inspect") / "input.json";
    std::ofstream(in) << json{{"input_ids", c["input_ids"]}, {"attention_mask", c["attention_mask"]},
                              {"labels", c["labels"]}}
                             .dump();
    const auto run =
        inspect("forward --model-dir " + dir.string() + " --input " + in.string() + " --adapter " + dir.string());
    fs::remove_all(in.parent_path());
    REQUIRE(run.status == 0);
    const auto j = json::parse(run.out);
    CHECK(j["adapter"]["layers"] == 2);
    CHECK(lora_test::allclose(json_tensor(j["logits"], torch::kDouble), json_tensor(c["logits"], torch::kDouble), rtol, atol,
                              "lora_inspect --adapter logits"));
    CHECK(j["loss"].get<double>() == Approx(c["loss"].get<double>()).epsilon(1e-4));
  }
  // A folder that is no adapter: exit code 1, the reason on stderr, nothing on stdout.
  const auto tmp = temp_dir("inspect_bad");
  std::ofstream(tmp / "input.json") << json{{"input_ids", {{1, 2, 3}}}}.dump();
  const auto run = lora_test::run_program_stderr(std::string(LORA_INSPECT_PATH) + " forward --model-dir " + dir.string() +
                                                 " --input " + (tmp / "input.json").string() + " --adapter " +
                                                 (tmp / "nope").string());
  INFO(run.err);
  CHECK(run.exit_code() == 1);
  CHECK(run.out.empty());
  CHECK(lora_test::contains(run.err, (tmp / "nope").string()));  // the message names the folder
  fs::remove_all(tmp);
}

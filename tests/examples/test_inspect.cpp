// lora_inspect end to end: the program's JSON output against the fixtures' reference values.
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

#include "support.hpp"

namespace {
namespace fs = std::filesystem;
using nlohmann::json;

/// Runs lora_inspect with `args`, capturing stdout (stderr goes to the test log).
lora_test::ProgramRun inspect(const std::string& args) {
  return lora_test::run_program(std::string(LORA_INSPECT_PATH) + " " + args);
}

}  // namespace

TEST_CASE("lora_inspect forward reproduces the fixtures' outputs", "[inspect]") {
  for (const std::string fixture : {"distilbert_seqcls_tiny", "gpt2_hub_layout_tiny"}) {
    const auto dir = lora_test::fixture(fixture);
    LORA_REQUIRE_PATH(dir / "expected.json");
    const auto expected = lora_test::read_json(dir / "expected.json");
    for (const auto& c : expected["cases"]) {
      INFO(fixture << " / " << c["name"]);
      json input = {{"input_ids", c["input_ids"]}, {"attention_mask", c["attention_mask"]}};
      if (c.contains("labels")) input["labels"] = c["labels"];
      const auto in = lora_test::temp_file("input.json", input.dump());
      const auto r = inspect("forward --model-dir " + dir.string() + " --input " + in.string());
      fs::remove_all(in.parent_path());
      REQUIRE(r.status == 0);
      const auto out = json::parse(r.out);
      CHECK(lora_test::allclose(lora_test::json_tensor(out["logits"]), lora_test::json_tensor(c["logits"]), 1e-4, 1e-4, "logits"));
      if (c.contains("last_hidden_state"))
        CHECK(lora_test::allclose(lora_test::json_tensor(out["last_hidden_state"]), lora_test::json_tensor(c["last_hidden_state"]), 1e-4, 1e-4,
                                  "last_hidden_state"));
      if (c.contains("loss") && !c["loss"].is_null())
        CHECK(out["loss"].get<double>() == Approx(c["loss"].get<double>()).epsilon(1e-4));
    }
  }
}

TEST_CASE("lora_inspect tensors and tokenize", "[inspect]") {
  const auto ckpt = lora_test::data("checkpoints/fake_gpt2");
  LORA_REQUIRE_PATH(ckpt);
  auto r = inspect("tensors " + (ckpt / "model.safetensors").string());
  REQUIRE(r.status == 0);
  const auto t = json::parse(r.out);
  CHECK(t["tensors"].size() == 16);
  CHECK(t["metadata"]["format"] == "pt");

  const auto texts = lora_test::temp_file("texts.json", json{{"texts", {"Hello world", "line one\nline two"}}}.dump());
  r = inspect("tokenize --kind gpt2 --tokenizer-dir " + ckpt.string() + " --texts " + texts.string());
  REQUIRE(r.status == 0);
  CHECK(json::parse(r.out)["ids"][0] == json::array({15496, 995}));
  r = inspect("tokenize --kind bert --tokenizer-dir " + lora_test::data("tokenizers/bert-base-uncased").string() +
              " --texts " + texts.string());
  REQUIRE(r.status == 0);
  CHECK(json::parse(r.out)["ids"][0] == json::array({101, 7592, 2088, 102}));
  fs::remove_all(texts.parent_path());
}

TEST_CASE("lora_inspect fails clearly: non-zero exit, message on stderr, nothing on stdout", "[inspect]") {
  auto r = inspect("tensors /nonexistent/model.safetensors 2>/dev/null");
  CHECK(r.status != 0);
  CHECK(r.out.empty());
  r = inspect("forward --model-dir /nonexistent --input /nonexistent.json 2>/dev/null");
  CHECK(r.status != 0);
}

TEST_CASE("lora_inspect ppl on a GPT-2 checkpoint", "[inspect]") {
  const auto dir = lora_test::fixture("gpt2_pretrained_tiny");
  const auto text = lora_test::data("wikitext-2-raw/wiki.valid.raw");
  LORA_REQUIRE_PATH(dir);
  LORA_REQUIRE_PATH(text);
  // A few lines of the file, to keep the test short.
  std::ifstream in(text);
  std::string all, line;
  for (int i = 0; i < 40 && std::getline(in, line); ++i) all += line + "\n";
  const auto part = lora_test::temp_file("wiki.raw", all);
  const auto r = inspect("ppl --model-dir " + dir.string() + " --text-file " + part.string() + " --block-size 64");
  fs::remove_all(part.parent_path());
  REQUIRE(r.status == 0);
  const auto out = json::parse(r.out);
  const double ppl = out["ppl"];
  CHECK(ppl > 1.0);
  CHECK(ppl < 50257.0);
  CHECK(std::exp(out["nll"].get<double>() / out["tokens"].get<double>()) == Approx(ppl));
}

// lora_inspect end to end: the program's JSON output against the fixtures' reference values.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>

#include "models/checkpoint.hpp"
#include "support.hpp"
#include "text/bpe.hpp"

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
    const auto expected = lora::read_json<nlohmann::json>(dir / "expected.json");
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

TEST_CASE("lora_inspect fails clearly: exit code 1, message on stderr, nothing on stdout", "[inspect]") {
  // Exit code 1 and a message naming the file: a shell that could not start the program (126,
  // 127) would not pass for it.
  auto r = lora_test::run_program_stderr(std::string(LORA_INSPECT_PATH) + " tensors /nonexistent/model.safetensors");
  INFO(r.err);
  CHECK(r.exit_code() == 1);
  CHECK(r.out.empty());
  CHECK(lora_test::contains(r.err, "lora_inspect: "));
  CHECK(lora_test::contains(r.err, "/nonexistent/model.safetensors"));
  r = lora_test::run_program_stderr(std::string(LORA_INSPECT_PATH) +
                                    " forward --model-dir /nonexistent --input /nonexistent.json");
  INFO(r.err);
  CHECK(r.exit_code() == 1);
  CHECK(r.out.empty());
  CHECK(lora_test::contains(r.err, "/nonexistent"));
}

TEST_CASE("lora_inspect ppl on a GPT-2 checkpoint", "[inspect]") {
  const auto dir = lora_test::fixture("gpt2_pretrained_tiny");
  const auto text = lora_test::data("wikitext-2-raw/wiki.valid.raw");
  LORA_REQUIRE_PATH(dir);
  LORA_REQUIRE_PATH(text);
  // A few lines of the file, to keep the test short.
  std::ifstream in(text);
  std::string all, line;
  std::vector<std::string> kept;  // the non-blank lines, each with its "\n" (data/wikitext.hpp, rule 1)
  for (int i = 0; i < 40 && std::getline(in, line); ++i) {
    all += line + "\n";
    if (line.find_first_not_of(" \t\r") != std::string::npos) kept.push_back(line + "\n");
  }
  const auto part = lora_test::temp_file("wiki.raw", all);
  const int64_t block = 64;
  const auto r = inspect("ppl --model-dir " + dir.string() + " --text-file " + part.string() + " --block-size 64");
  fs::remove_all(part.parent_path());
  REQUIRE(r.status == 0);
  const auto out = json::parse(r.out);
  const double ppl = out["ppl"];

  // The known value, by a second path written here: the same model in this process, the same
  // tokenizer, blocks cut and NLL summed by hand (log_softmax + gather over each block's next
  // tokens) instead of the program's load_wikitext / collate_lm / causal_lm_nll. The model
  // itself is checked against Hugging Face's outputs by the forward test above and by
  // test_models.cpp; this checks the perplexity pipeline: tokenization per line, blocking,
  // what counts as a target and the token-weighted mean. Tolerance: float32 summation order.
  auto loaded = models::load_gpt2(dir.string());
  loaded.model->eval();
  text::BpeTokenizer tok(dir / "vocab.json", dir / "merges.txt");
  std::vector<int64_t> stream;
  for (const auto& l : kept) {
    const auto ids = tok.encode(l);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  torch::NoGradGuard no_grad;
  double nll = 0;
  int64_t targets = 0, blocks = 0;
  for (size_t start = 0; start < stream.size(); start += block, ++blocks) {
    const auto end = std::min(stream.size(), start + static_cast<size_t>(block));
    const auto ids = torch::tensor(std::vector<int64_t>(stream.begin() + start, stream.begin() + end)).unsqueeze(0);
    const auto logp = torch::log_softmax(loaded.model->forward(ids).to(torch::kDouble), -1)[0];
    const auto n = ids.size(1);
    if (n < 2) continue;
    nll -= logp.slice(0, 0, n - 1).gather(1, ids[0].slice(0, 1, n).unsqueeze(1)).sum().item<double>();
    targets += n - 1;
  }
  REQUIRE(targets > 0);
  CHECK(out["blocks"].get<int64_t>() == blocks);
  CHECK(out["tokens"].get<int64_t>() == targets);
  CHECK(out["nll"].get<double>() == Approx(nll).epsilon(1e-5));
  CHECK(ppl == Approx(std::exp(nll / static_cast<double>(targets))).epsilon(1e-5));
  CHECK(std::exp(out["nll"].get<double>() / out["tokens"].get<double>()) == Approx(ppl));
}

namespace {
/// A copy of fixture `name` (config.json edited by `edit`, model.safetensors linked) in a fresh folder.
fs::path edited_fixture(const std::string& name, const std::function<void(json&)>& edit) {
  const auto src = lora_test::fixture(name);
  const auto dir = lora_test::temp_dir("edited_" + name);
  auto config = lora::read_json<nlohmann::json>(src / "config.json");
  edit(config);
  std::ofstream(dir / "config.json") << config.dump(2);
  fs::create_symlink(src / "model.safetensors", dir / "model.safetensors");
  return dir;
}
}  // namespace

TEST_CASE("lora_inspect: a config.json whose sizes disagree with the checkpoint stops before allocating", "[inspect]") {
  LORA_REQUIRE_PATH(lora_test::fixture("distilbert_seqcls_tiny"));
  LORA_REQUIRE_PATH(lora_test::fixture("gpt2_hub_layout_tiny"));
  const auto input = lora_test::temp_file("ids.json", json{{"input_ids", {{1, 2, 3}}}, {"attention_mask", nullptr}}.dump());
  struct Case {
    std::string fixture, field;
    json value;
  };
  for (const auto& c : {Case{"distilbert_seqcls_tiny", "dim", 1000000000000}, Case{"distilbert_seqcls_tiny", "hidden_dim", 1LL << 40},
                        Case{"distilbert_seqcls_tiny", "n_layers", 1000000}, Case{"distilbert_seqcls_tiny", "vocab_size", 1LL << 40},
                        Case{"gpt2_hub_layout_tiny", "n_embd", 1000000000000}, Case{"gpt2_hub_layout_tiny", "n_positions", 1LL << 40},
                        Case{"gpt2_hub_layout_tiny", "n_layer", 1000000}, Case{"gpt2_hub_layout_tiny", "n_inner", 1LL << 40}}) {
    const auto dir = edited_fixture(c.fixture, [&](json& j) {
      j[c.field] = c.value;
      if (c.field == "dim") j["n_heads"] = 1;  // still a divisor of dim: the shapes must catch it
      if (c.field == "n_embd") j["n_head"] = 1;
    });
    const auto r = inspect("forward --model-dir " + dir.string() + " --input " + input.string() + " 2>&1");
    INFO(c.fixture << " " << c.field << " = " << c.value << ": " << r.out);
    CHECK(r.status != 0);
    CHECK(lora_test::contains(r.out, (dir / "config.json").string()));    // the file
    CHECK(lora_test::contains(r.out, "field \"" + c.field + "\""));       // the field
    CHECK(lora_test::contains(r.out, " is " + c.value.dump() + " "));      // the value
    CHECK(lora_test::contains(r.out, "config.json saved with this checkpoint"));  // the fix
    CHECK_FALSE(lora_test::contains(r.out, "frame #"));  // no LibTorch stack trace
    fs::remove_all(dir);
  }
  fs::remove_all(input.parent_path());
}

TEST_CASE("lora_inspect prints a LibTorch error without its stack frames", "[inspect]") {
  const auto dir = lora_test::fixture("gpt2_hub_layout_tiny");
  LORA_REQUIRE_PATH(dir);
  // A token id far beyond the vocabulary: the embedding lookup throws a c10::Error.
  const auto input = lora_test::temp_file("ids.json", json{{"input_ids", {{1, 2, 100000000}}}, {"attention_mask", nullptr}}.dump());
  const auto r = inspect("forward --model-dir " + dir.string() + " --input " + input.string() + " 2>&1");
  fs::remove_all(input.parent_path());
  INFO(r.out);
  CHECK(r.status != 0);
  CHECK(lora_test::contains(r.out, "lora_inspect: "));
  CHECK_FALSE(lora_test::contains(r.out, "frame #"));
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') <= 2);
}

TEST_CASE("Hub config: a size beyond 2^40 is refused when read, naming file, field and value", "[inspect][fuzz]") {
  // Fuzz finding (hub_config harness): "n_embd": 9223372036854775807 made read_gpt2_config()
  // compute GPT-2's default n_inner, 4 * n_embd, with a signed overflow (undefined behaviour).
  for (const std::string value : {"9223372036854775807", "18446744073709551615", "2305843009213693952", "1099511627777"}) {
    const auto path = lora_test::temp_file("config.json", R"({"model_type": "gpt2", "n_embd": )" + value + R"(, "n_head": 1})");
    const auto gpt2 = lora_test::error_of<models::HubConfigError>([&] { models::read_gpt2_config(path.string()); });
    INFO(gpt2);
    CHECK(lora_test::contains(gpt2, path.string()));
    CHECK(lora_test::contains(gpt2, "field \"n_embd\" is " + value));
    CHECK(lora_test::contains(gpt2, "expected an integer in [1, 1099511627776]"));
    fs::remove_all(path.parent_path());
    const auto bert = lora_test::temp_file("config.json", R"({"model_type": "distilbert", "dim": )" + value + "}");
    const auto distilbert = lora_test::error_of<models::HubConfigError>([&] { models::read_distilbert_config(bert.string()); });
    INFO(distilbert);
    CHECK(lora_test::contains(distilbert, "field \"dim\" is " + value));
    fs::remove_all(bert.parent_path());
  }
  // 2^40 itself is read (the checkpoint check refuses it later, see the test above).
  const auto path = lora_test::temp_file("config.json", R"({"model_type": "gpt2", "n_embd": 1099511627776, "n_head": 1})");
  CHECK(models::read_gpt2_config(path.string()).n_inner == 4 * 1099511627776LL);
  fs::remove_all(path.parent_path());
}

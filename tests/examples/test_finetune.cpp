// finetune (examples/finetune.cpp) end to end, as a separate process, for a few steps on the
// small pretrained DistilBERT of the shared fixtures: its exit status, the accuracy it prints,
// and the PEFT adapter folder it writes, reloaded here and evaluated by other code than the
// program's (one row at a time, no padding).
#include <lora/lora.hpp>
#include <nlohmann/json.hpp>

#include <sys/wait.h>

#include <filesystem>
#include <regex>
#include <string>

#include "data/agnews.hpp"
#include "models/checkpoint.hpp"
#include "models/export.hpp"
#include "support.hpp"
#include "text/wordpiece.hpp"

namespace {
namespace fs = std::filesystem;

std::string finetune_args(const fs::path& out) {
  return std::string(LORA_FINETUNE_PATH) + " --model-dir " + lora_test::fixture("distilbert_news_small").string() +
         " --data-dir " + lora_test::data("").string() + " --out " + out.string() +
         " --steps 4 --rows 64 --test-rows 64 --batch-size 16 --threads 1";
}

/// The exit code of a run_program() status.
int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

/// The number after `label` in `text` ("test accuracy: 42.19%" -> 42.19), or NaN.
double percent_after(const std::string& text, const std::string& label) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(label + R"(\s*([0-9.]+)%)"))) return NAN;
  return std::stod(m[1].str());
}
}  // namespace

TEST_CASE("finetune: a few steps, then the adapter folder reloads and gives the printed accuracy",
          "[programs][finetune]") {
  LORA_REQUIRE_PATH(lora_test::fixture("distilbert_news_small"));
  LORA_REQUIRE_PATH(lora_test::data("agnews/test.csv"));
  const auto dir = lora_test::temp_dir("finetune");
  const auto out = dir / "adapter";
  const auto r = lora_test::run_program(finetune_args(out));
  INFO(r.out);
  REQUIRE(exit_code(r.status) == 0);
  const double printed = percent_after(r.out, "test accuracy:");
  REQUIRE(std::isfinite(printed));
  CHECK(percent_after(r.out, "reloaded: test accuracy") == printed);  // the program's own check, printed
  REQUIRE(fs::exists(out / "adapter_config.json"));
  REQUIRE(fs::exists(out / "adapter_model.safetensors"));
  const auto config = lora::read_json<nlohmann::json>(out / "adapter_config.json");
  CHECK(config.at("r") == 16);
  CHECK(config.at("task_type") == "SEQ_CLS");

  // The adapter was trained: B starts at zero (uniform-zero init) and is not zero any more.
  const lora::safetensors::File weights((out / "adapter_model.safetensors").string());
  const auto b = weights.tensor("base_model.model.distilbert.transformer.layer.0.attention.q_lin.lora_B.weight");
  CHECK(b.abs().max().item<double>() > 0);

  // Reload into a fresh model (its own new head drawn from another seed than the program's) and
  // count correct rows one at a time: the accuracy the program printed, up to one row of 64
  // (batched rows are padded: a near tie may fall the other way).
  auto fresh = models::load_distilbert(lora_test::fixture("distilbert_news_small").string(), 4, /*seed=*/12345).model;
  lora::peft::LoadOptions lo;
  lo.mapping = models::distilbert_peft_mapping();
  const auto adapters = lora::peft::load(*fresh, out.string(), lo);
  CHECK(adapters.layers().size() == 4 * 6);  // 4 blocks x q, k, v, out, lin1, lin2
  fresh->eval();
  torch::NoGradGuard no_grad;
  const text::WordPieceTokenizer tok(lora_test::fixture("distilbert_news_small") / "vocab.txt");
  auto rows = data::read_agnews(lora_test::data("agnews/test.csv"));
  rows.resize(64);
  int correct = 0;
  for (const auto& row : rows) {
    const auto ids = tok.encode(row.text, true, 128);
    const auto logits = fresh->forward(torch::tensor(ids, torch::kInt64).unsqueeze(0)).logits;  // (1, 4)
    correct += logits.argmax(1).item<int64_t>() == row.label;
  }
  const double here = 100.0 * correct / 64;
  INFO("printed " << printed << "%, recomputed " << here << "%");
  CHECK(std::abs(here - printed) <= 100.0 / 64 + 1e-9);
  fs::remove_all(dir);
}

TEST_CASE("finetune: bad flags and missing files stop it before training, saying what to do", "[programs][finetune]") {
  const auto dir = lora_test::temp_dir("finetune_errors");
  auto r = lora_test::run_program(finetune_args(dir / "a") + " --rank 0 2>&1");
  CHECK(exit_code(r.status) == 2);
  CHECK(lora_test::contains(r.out, "--rank"));
  r = lora_test::run_program(std::string(LORA_FINETUNE_PATH) + " --model-dir /nonexistent/model --data-dir " +
                             (dir / "nodata").string() + " --out " + (dir / "b").string() + " 2>&1");
  CHECK(exit_code(r.status) == 1);
  CHECK(lora_test::contains(r.out, "/nonexistent/model/model.safetensors"));
  CHECK(lora_test::contains(r.out, (dir / "nodata" / "agnews" / "test.csv").string()));
  CHECK(lora_test::contains(r.out, "--model-dir"));
  CHECK_FALSE(fs::exists(dir / "b"));
  fs::remove_all(dir);
}

// serve_adapters (examples/serve_adapters.cpp) end to end, as a separate process, on the small
// pretrained GPT-2 of the shared fixtures: two adapter folders written here, requests mixing
// them and the base in each batch; every perplexity it prints is recomputed here by other code
// than the program's (a fresh model with only that row's adapter loaded, one row at a time).
#include <lora/lora.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "models/checkpoint.hpp"
#include "models/export.hpp"
#include "support.hpp"
#include "text/bpe.hpp"

namespace {
namespace fs = std::filesystem;

/// Writes a random adapter (B made non-zero) of rank `r` on `targets` to `dir`.
void write_adapter(const fs::path& model_dir, const fs::path& dir, int64_t r, std::vector<std::string> targets,
                   uint64_t seed) {
  auto loaded = models::load_gpt2(model_dir.string());
  lora::Config c;
  c.rank = r, c.alpha = 2.0 * r, c.targets = std::move(targets), c.seed = seed;
  c.init = lora::init::gaussian_gaussian(0.05);
  const auto h = lora::inject(*loaded.model, c);
  lora::peft::SaveOptions o;
  o.mapping = models::gpt2_peft_mapping();
  lora::peft::save(h, dir.string(), o);
}

/// Perplexity of `text` under the base model with only adapter folder `adapter` (none if empty).
double perplexity_alone(const fs::path& model_dir, const fs::path& adapter, const std::string& text) {
  auto loaded = models::load_gpt2(model_dir.string());
  if (!adapter.empty()) {
    lora::peft::LoadOptions o;
    o.mapping = models::gpt2_peft_mapping();
    lora::peft::load(*loaded.model, adapter.string(), o);
  }
  loaded.model->eval();
  torch::NoGradGuard g;
  const text::BpeTokenizer tok(model_dir / "vocab.json", model_dir / "merges.txt");
  const auto ids = torch::tensor(tok.encode(text), torch::kLong).unsqueeze(0);  // (1, T)
  const auto loss = models::causal_lm_loss(loaded.model(ids), ids);
  return std::exp(loss.item<double>());
}
}  // namespace

TEST_CASE("serve_adapters: mixed batches, each printed perplexity equal to its row run alone with its adapter",
          "[programs][serving]") {
  const auto model = lora_test::fixture("gpt2_pretrained_tiny");
  LORA_REQUIRE_PATH(model);
  const auto dir = lora_test::temp_dir("serve_adapters");
  write_adapter(model, dir / "news", 4, {"c_attn"}, 1);
  write_adapter(model, dir / "wiki", 8, {"c_attn", "c_fc", "c_proj"}, 2);
  const std::vector<std::pair<std::string, std::string>> requests = {
      {"news", "Stocks rallied on Wall Street as oil prices fell."},
      {"-", "The team won the championship game on Sunday."},
      {"wiki", "The river flows through the valley to the sea."},
      {"news", "The central bank raised interest rates again."},
      {"wiki", "He was born in a small town in the north."}};
  {
    std::ofstream out(dir / "requests.tsv");
    for (const auto& [name, text] : requests) out << name << "\t" << text << "\n";
  }
  const auto cmd = std::string(LORA_SERVE_ADAPTERS_PATH) + " --model-dir " + model.string() + " --adapter news=" +
                   (dir / "news").string() + " --adapter wiki=" + (dir / "wiki").string() + " --requests " +
                   (dir / "requests.tsv").string() + " --batch-size 3 --threads 1";
  const auto r = lora_test::run_program(cmd);
  INFO(r.out);
  REQUIRE(r.exit_code() == 0);
  CHECK(lora_test::contains(r.out, "tokens/s"));
  for (size_t i = 0; i < requests.size(); ++i) {
    std::smatch m;
    const std::regex row("\\n\\s*" + std::to_string(i) + "\\s+(\\S+)\\s+(\\d+)\\s+([0-9.]+)");
    REQUIRE(std::regex_search(r.out, m, row));
    const double printed = std::stod(m[3].str());
    const auto& name = requests[i].first;
    CHECK(m[1].str() == (name == "-" ? "(base)" : name));
    const double alone = perplexity_alone(model, name == "-" ? fs::path() : dir / name, requests[i].second);
    std::cout << "  row " << i << " (" << name << "): printed " << printed << ", alone " << alone
              << ", |diff| " << std::abs(printed - alone) << "\n";
    CHECK(printed == Approx(alone).epsilon(1e-5));
  }
  // The adapters change the text's perplexity (the comparison above can fail).
  CHECK(std::abs(perplexity_alone(model, dir / "news", requests[0].second) -
                 perplexity_alone(model, fs::path(), requests[0].second)) > 1e-3);
}

TEST_CASE("serve_adapters: a request for an adapter it does not serve is refused, naming those it does",
          "[programs][serving]") {
  const auto model = lora_test::fixture("gpt2_pretrained_tiny");
  LORA_REQUIRE_PATH(model);
  const auto dir = lora_test::temp_dir("serve_adapters_unknown");
  write_adapter(model, dir / "news", 4, {"c_attn"}, 1);
  { std::ofstream(dir / "requests.tsv") << "news\tone\nsports\ttwo\n"; }
  const auto r = lora_test::run_program_stderr(std::string(LORA_SERVE_ADAPTERS_PATH) + " --model-dir " +
                                               model.string() + " --adapter news=" + (dir / "news").string() +
                                               " --requests " + (dir / "requests.tsv").string());
  INFO(r.out << r.err);
  CHECK(r.exit_code() == 1);
  CHECK(lora_test::contains(r.err, "'sports'"));
  CHECK(lora_test::contains(r.err, "'news'"));
}

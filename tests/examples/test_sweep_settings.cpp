// The settings every committed point file of docs/results/ records must stay what this code
// records for the same flags: a rerun or a --merge checks them (load_done) and refuses a file
// whose settings differ, so a change to what is recorded would throw away every finished point
// of the study. Each experiment folder is read with the preset scripts/reproduce-small.sh runs
// it with; no training, no data (the tasks only name themselves and their model).
#include "sweep/cli.hpp"
#include "sweep/point.hpp"
#include "tasks/agnews_task.hpp"
#include "tasks/wikitext_task.hpp"

#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "support.hpp"

namespace {
namespace fs = std::filesystem;

/// An experiment of docs/results/ as scripts/reproduce-small.sh runs it: agnews-<name> with
/// agnews_sweep --preset small-<name> on distilbert_news_small; wikitext with wikitext_sweep
/// --preset small, wikitext-<name> with --preset small-<name> (lm-head, fine, lm-head-fine),
/// on gpt2_pretrained_tiny.
struct Experiment {
  sweep::Options options;
  std::unique_ptr<sweep::Task> task;
};

Experiment experiment(const fs::path& folder) {
  const std::string name = folder.filename().string();
  const bool agnews = name.rfind("agnews-", 0) == 0;
  const std::string preset = agnews ? "small-" + name.substr(7) : name == "wikitext" ? "small" : "small-" + name.substr(9);
  // Only the model folder's name is recorded ("model"): no file is read.
  const std::string model = agnews ? "distilbert_news_small" : "gpt2_pretrained_tiny";
  const std::vector<std::string> args = {"--preset", preset, "--out", folder.string(), "--model-dir",
                                         "/nonexistent/" + model, "--data-dir", "/nonexistent/data"};
  Experiment e;
  if (agnews) {
    e.options = sweep::parse_options(args, tasks::agnews_spec());
    e.task = std::make_unique<tasks::AgNewsTask>(e.options);
  } else {
    e.options = sweep::parse_options(args, tasks::wikitext_spec());
    e.task = std::make_unique<tasks::WikiTextTask>(e.options);
  }
  return e;
}
}  // namespace

TEST_CASE("sweep: every committed point file of docs/results stays valid for its preset", "[sweep][settings]") {
  const fs::path results = fs::path(LORA_SOURCE_DIR) / "docs" / "results";
  REQUIRE(fs::is_directory(results));
  size_t lora = 0, full = 0;
  for (const auto& entry : fs::directory_iterator(results)) {
    if (!fs::is_directory(entry.path() / "points")) continue;
    INFO("experiment " << entry.path().filename().string());
    const auto e = experiment(entry.path());
    std::set<std::string> in_grid;
    for (const auto& p : sweep::build_grid(e.options)) {
      in_grid.insert(sweep::key(p) + ".json");
      if (!fs::exists(sweep::detail::point_path(e.options, p))) continue;
      INFO("point " << sweep::key(p));
      const auto recorded = lora::read_json<nlohmann::json>(sweep::detail::point_path(e.options, p)).at("settings");
      const auto now = sweep::detail::point_settings(e.options, *e.task, p);
      INFO("differs: " << sweep::detail::settings_diff(now, recorded));
      CHECK(recorded == now);
      CHECK(recorded.dump() == now.dump());  // byte for byte, as a file written now would hold them
      // What a rerun and --merge do with the file: take it as this point, done.
      std::optional<sweep::RunRecord> record;
      CHECK_NOTHROW(record = sweep::detail::load_done(e.options, *e.task, p));
      CHECK(record.has_value());
      (p.is_full() ? full : lora) += 1;
    }
    // Every point file belongs to the preset's grid: otherwise the folder was run with other
    // flags and this test would check nothing there.
    for (const auto& f : fs::directory_iterator(entry.path() / "points")) {
      INFO("file " << f.path().filename().string());
      if (f.path().extension() == ".json") CHECK(in_grid.count(f.path().filename().string()) == 1);
    }
  }
  INFO(lora << " LoRA and " << full << " FullFT point files checked");
  CHECK(lora > 0);
  CHECK(full > 0);
}

TEST_CASE("sweep: a LoRA and a FullFT point record the settings point_run() gives", "[sweep][settings]") {
  // One point of each kind of experiment 1's preset, setting by setting against point_run():
  // the settings file names what the engine trains with, not a copy of it.
  const auto e = experiment(fs::path(LORA_SOURCE_DIR) / "docs" / "results" / "agnews-alpha32");
  const auto grid = sweep::build_grid(e.options);
  for (const auto& p : {grid.front(), grid.back()}) {
    INFO(sweep::key(p));
    const auto run = sweep::point_run(e.options, p);
    const auto s = sweep::detail::point_settings(e.options, *e.task, p);
    CHECK(s.at("lr") == run.train.lr);
    CHECK(s.at("epochs") == run.train.epochs);
    CHECK(s.at("seed") == run.seed);
    CHECK(s.at("optimizer").at("weight_decay") == run.train.adamw.weight_decay);
    CHECK(s.at("optimizer").at("eps") == run.train.adamw.eps);
    CHECK(p.is_full() == !run.lora.has_value());
    if (run.lora) {
      CHECK(s.at("rank") == run.lora->rank);
      CHECK(s.at("alpha") == run.lora->alpha);
      CHECK(s.at("scale") == run.lora->scaling.scale(run.lora->alpha, run.lora->rank));
      CHECK(s.at("targets") == nlohmann::json(run.lora->targets));
      CHECK(s.at("loraplus_ratio") == run.train.loraplus_ratio);
    } else {
      CHECK_FALSE(s.contains("rank"));
      CHECK(run.full_train == "all");
      CHECK_FALSE(s.contains("full_train"));  // "all" is not recorded: older files are read as it
    }
  }
  CHECK(grid.front().is_full());
  CHECK_FALSE(grid.back().is_full());
}

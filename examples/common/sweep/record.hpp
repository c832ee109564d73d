// One point file as the analysis reads it: the task's headline metric (Metric) and a finished
// point's record (RunRecord), parsed from the file's JSON (schema: point_file.hpp).
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "errors.hpp"

namespace sweep {

/// The task's headline number.
struct Metric {
  std::string key = "test_acc";             ///< field name in results.json: "test_acc", "test_ppl"
  std::string label = "test accuracy (%)";  ///< axis and table label
  bool higher_is_better = true;
  bool log_scale = false;  ///< a ratio-scale value (perplexity): fitted and plotted in log10
};

/// When a finished run counts as collapsed: training failed although the loss stayed finite.
/// A run collapsed when it diverged (a non-finite loss), has no metric, or its metric is no
/// better than `bound`: chance accuracy for a classifier, the untrained base model's
/// perplexity for a language model. The optimum is fitted on runs that did not collapse; the
/// stability edge is the largest LR below the first collapse (analysis.hpp).
struct CollapseRule {
  double bound = NAN;             ///< NaN: only a diverged run (or one without a metric) collapsed
  bool higher_is_better = true;   ///< the metric's direction
  std::string description;        ///< e.g. "test_acc <= 30 (chance, 25%, + 5 points)"

  bool collapsed(const std::optional<double>& metric, bool diverged) const {
    if (diverged || !metric) return true;
    if (std::isnan(bound)) return false;
    return higher_is_better ? *metric <= bound : *metric >= bound;
  }
};

/// One point file, as the report needs it.
struct RunRecord {
  std::string key, column, method;
  int64_t rank = 0;
  double alpha = 0;  ///< 0 for FullFT
  double scale = 0;  ///< LoRA's s (settings.scale); 0 for FullFT
  double lr = 0;
  uint64_t seed = 0;
  std::optional<double> metric, best_val_loss;
  bool diverged = false;
  bool collapsed = false;  ///< by the task's CollapseRule, set by the report (mark_collapsed)
  nlohmann::json doc;  ///< the whole point file
};

/// Sets each record's `collapsed` by `rule`.
inline void mark_collapsed(std::vector<RunRecord>& records, const CollapseRule& rule) {
  for (auto& r : records) r.collapsed = rule.collapsed(r.metric, r.diverged);
}

namespace detail {

inline std::optional<double> optional_number(const nlohmann::json& j) {
  if (j.is_number()) return j.get<double>();
  return std::nullopt;
}

}  // namespace detail

/// The record of a point file `doc` (see point_file.hpp for its schema); `metric_key` names the metric.
inline RunRecord record_from_json(const nlohmann::json& doc, const std::string& metric_key) {
  const auto& s = doc.at("settings");
  const auto& r = doc.at("results");
  // Out-of-range or non-integer numbers must not reach get<int64_t/uint64_t>() (undefined
  // behaviour): an error instead, which the caller reports with the file's name.
  for (const char* k : {"seed", "rank"})
    if (s.contains(k) && !(s.at(k).is_number_unsigned() || (s.at(k).is_number_integer() && s.at(k).get<int64_t>() >= 0)))
      throw examples::DataError(std::string("settings.") + k + " is " + s.at(k).dump() +
                                ", not a non-negative integer");
  RunRecord rec;
  rec.key = doc.at("key").get<std::string>();
  rec.method = s.at("method").get<std::string>();
  rec.rank = s.value("rank", int64_t{0});
  rec.alpha = s.value("alpha", 0.0);
  rec.scale = s.value("scale", 0.0);
  rec.lr = s.at("lr").get<double>();
  rec.seed = s.at("seed").get<uint64_t>();
  // Files written before --alphas have no "column" of their own: theirs follows from the rank.
  rec.column = doc.contains("column") ? doc.at("column").get<std::string>()
               : rec.method == "full" ? "full"
                                      : "lora_r" + std::to_string(rec.rank);
  rec.diverged = r.at("diverged").get<bool>();
  rec.metric = detail::optional_number(r.value(metric_key, nlohmann::json()));
  rec.best_val_loss = detail::optional_number(r.value("best_val_loss", nlohmann::json()));
  rec.doc = doc;
  return rec;
}


}  // namespace sweep

// One point file as the analysis reads it: the task's headline metric (Metric) and a finished
// point's record (RunRecord), parsed from the file's JSON (schema: point_file.hpp).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

#include "errors.hpp"

namespace sweep {

/// The task's headline number.
struct Metric {
  std::string key = "test_acc";             ///< field name in results.json: "test_acc", "test_ppl"
  std::string label = "test accuracy (%)";  ///< axis and table label
  bool higher_is_better = true;
};

/// One point file, as the report needs it.
struct RunRecord {
  std::string key, column, method;
  int64_t rank = 0;
  double lr = 0;
  uint64_t seed = 0;
  std::optional<double> metric, best_val_loss;
  bool diverged = false;
  nlohmann::json doc;  ///< the whole point file
};

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
  rec.lr = s.at("lr").get<double>();
  rec.seed = s.at("seed").get<uint64_t>();
  rec.column = rec.method == "full" ? "full" : "lora_r" + std::to_string(rec.rank);
  rec.diverged = r.at("diverged").get<bool>();
  rec.metric = detail::optional_number(r.value(metric_key, nlohmann::json()));
  rec.best_val_loss = detail::optional_number(r.value("best_val_loss", nlohmann::json()));
  rec.doc = doc;
  return rec;
}


}  // namespace sweep

// The fields of a PEFT adapter_config.json, both ways: reading them with errors that name the
// file, the field and the value seen (Fields), numbers as PEFT writes them, and the init policy
// behind init_lora_weights. lora/peft_config.hpp reads and writes the file with these.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../init.hpp"
#include "match.hpp"

namespace lora::detail {

/// A number as JSON: an integer when it is one (PEFT writes lora_alpha as an int).
inline nlohmann::ordered_json json_number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 9e15) return static_cast<int64_t>(v);
  return v;
}

/// Field access with messages that name the file, the field and the value seen.
class Fields {
 public:
  Fields(const nlohmann::ordered_json& j, std::string path) : j_(j), path_(std::move(path)) {}

  const nlohmann::ordered_json* find(const char* f) const {
    const auto it = j_.find(f);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  [[noreturn]] void fail(const char* f, const std::string& expected) const {
    std::string seen = j_.contains(f) ? j_.at(f).dump() : "absent";
    if (seen.size() > 80) seen = seen.substr(0, 77) + "...";
    throw FileError(str("PEFT adapter config '", path_, "': field \"", f, "\" is ", seen, "; expected ", expected, "."));
  }
  [[noreturn]] void unsupported(const char* f, const std::string& why) const {
    std::string seen = j_.contains(f) ? j_.at(f).dump() : "absent";
    if (seen.size() > 80) seen = seen.substr(0, 77) + "...";
    throw ConfigError(str("PEFT adapter config '", path_, "': \"", f, "\": ", seen, " is not supported: ", why));
  }
  std::string text(const char* f, const std::string& fallback) const {
    const auto* v = find(f);
    if (!v) return fallback;
    if (!v->is_string()) fail(f, "a string");
    return v->get<std::string>();
  }
  bool boolean(const char* f, bool fallback) const {
    const auto* v = find(f);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(f, "true or false");
    return v->get<bool>();
  }
  double number(const char* f, double fallback) const {
    const auto* v = find(f);
    if (!v) return fallback;
    if (!v->is_number() || !std::isfinite(v->get<double>())) fail(f, "a finite number");
    return v->get<double>();
  }
  /// A list of strings or one string (returned in `single`), or null.
  std::vector<std::string> names(const char* f, std::string* single) const {
    std::vector<std::string> out;
    const auto* v = find(f);
    if (!v) return out;
    if (v->is_string() && single) {
      *single = v->get<std::string>();
      return out;
    }
    if (!v->is_array()) fail(f, single ? "a list of module names, a regex string or null" : "a list of names or null");
    for (const auto& x : *v) {
      if (!x.is_string()) fail(f, "a list of strings");
      out.push_back(x.get<std::string>());
    }
    return out;
  }
  template <typename V>
  std::vector<std::pair<std::string, V>> pattern(const char* f, bool integer) const {
    std::vector<std::pair<std::string, V>> out;
    const auto* v = find(f);
    if (!v) return out;
    if (!v->is_object()) fail(f, "an object mapping module name patterns to values");
    for (const auto& [k, x] : v->items()) {
      if (integer ? !x.is_number_integer() : !x.is_number()) fail(f, integer ? "integer values" : "numeric values");
      out.emplace_back(k, x.template get<V>());
    }
    return out;
  }

 private:
  const nlohmann::ordered_json& j_;
  std::string path_;
};

/// The fields of adapter_config.json this library reads (the others go to `extra`).
inline const std::set<std::string>& known_fields() {
  static const std::set<std::string> f = {
      "peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "bias", "use_rslora",
      "use_dora", "fan_in_fan_out", "inference_mode", "modules_to_save", "base_model_name_or_path", "task_type",
      "init_lora_weights", "rank_pattern", "alpha_pattern"};
  return f;
}

/// The init policy for PEFT's init_lora_weights; throws ConfigError for one that changes the base
/// weight in a way this library cannot reproduce.
inline Init init_from_peft(const nlohmann::json& v, const std::string& file) {
  if (v.is_null() || v.is_boolean()) return init::uniform_zero();  // the tensors are loaded anyway
  if (v.is_string()) {
    const auto s = v.get<std::string>();
    if (s == "gaussian") return init::gaussian_zero();
    if (s == "pissa") return init::pissa();
    if (s == "olora") return init::olora();
    throw ConfigError(str("PEFT adapter config '", file, "': init_lora_weights \"", s,
                          "\" is not supported: it changes the base weights in a way this library cannot reproduce "
                          "(supported: true, false, \"gaussian\", \"pissa\", \"olora\"). Convert the adapter to "
                          "plain LoRA in PEFT first (see PEFT's path_initial_model_for_weight_conversion)."));
  }
  throw FileError(str("PEFT adapter config '", file, "': init_lora_weights is ", v.dump(),
                      "; expected true, false or a method name."));
}

/// PEFT's init_lora_weights for an init policy.
inline nlohmann::ordered_json init_to_peft(const Init& init) {
  if (init.name == "gaussian-zero") return "gaussian";
  if (init.name == "pissa") return "pissa";
  if (init.name == "olora") return "olora";
  if (init.changes_base)
    throw ConfigError(str("lora::peft::save: init policy '", init.name,
                          "' changes the base weights, which PEFT cannot reproduce from adapter_config.json. "
                          "Export a merged model instead, or use pissa / olora / an init that keeps the base."));
  return true;
}

}  // namespace lora::detail

// Reading a Hugging Face `config.json`: detail::ConfigReader parses the file and reads its
// fields one by one, each checked (type and range) and falling back to a default when absent
// or null; a field that cannot be used throws HubConfigError naming the file, the field, the
// value and the fix. The fields each model reads, and HF's defaults: hub_config.hpp.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "../errors.hpp"
#include "layers.hpp"  // Activation
#include "names.hpp"   // str

namespace models {

/// A config.json that cannot be used. The message names the file, the field, the value seen
/// and what to do.
class HubConfigError : public examples::FileError {
 public:
  using FileError::FileError;
};

namespace detail {

/// Reads the fields of one config.json; absent and null fields take the given default.
class ConfigReader {
 public:
  /// Parses the JSON file at `path`; throws examples::FileError if it cannot be read or parsed.
  explicit ConfigReader(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw examples::FileError(str("cannot open config file '", path, "'. Check the path."));
    try {
      json_ = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      throw examples::FileError(
          str("config file '", path, "' is not valid JSON (", e.what(), "). Download config.json again."));
    }
    if (!json_.is_object())
      throw examples::FileError(
          str("config file '", path, "' holds a JSON ", json_.type_name(), "; expected an object."));
  }

  const std::string& path() const { return path_; }

  /// The largest size or id a config may give: 2^40 (no model has a dimension near it), so that
  /// sizes multiplied together (4 * n_embd, ...) cannot overflow int64_t. Fuzzing found
  /// "n_embd": 9223372036854775807 overflowing 4 * n_embd (GPT-2's default n_inner).
  static constexpr int64_t kMaxInteger = int64_t{1} << 40;

  /// An integer in [min, kMaxInteger].
  int64_t integer(const char* field, int64_t fallback, int64_t min = 1) const {
    const auto* v = find(field);
    if (!v) return fallback;
    const bool ok = v->is_number_unsigned() ? v->get<uint64_t>() <= static_cast<uint64_t>(kMaxInteger)
                                              && v->get<int64_t>() >= min
                                            : v->is_number_integer() && v->get<int64_t>() >= min &&
                                                  v->get<int64_t>() <= kMaxInteger;
    if (!ok) fail(field, *v, str("an integer in [", min, ", ", kMaxInteger, "]"), str(fallback));
    return v->get<int64_t>();
  }

  /// A number in [lo, hi].
  double number(const char* field, double fallback, double lo, double hi) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_number() || !(v->get<double>() >= lo && v->get<double>() <= hi))
      fail(field, *v, str("a number in [", lo, ", ", hi, "]"), str(fallback));
    return v->get<double>();
  }

  /// A dropout probability, in [0, 1).
  double probability(const char* field, double fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_number() || !(v->get<double>() >= 0.0 && v->get<double>() < 1.0))
      fail(field, *v, "a probability in [0, 1)", str(fallback));
    return v->get<double>();
  }

  bool boolean(const char* field, bool fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_boolean()) fail(field, *v, "true or false", fallback ? "true" : "false");
    return v->get<bool>();
  }

  std::string text(const char* field, const std::string& fallback) const {
    const auto* v = find(field);
    if (!v) return fallback;
    if (!v->is_string()) fail(field, *v, "a string", "\"" + fallback + "\"");
    return v->get<std::string>();
  }

  /// The activation named by `field` (an HF ACT2FN key).
  Activation activation(const char* field, const std::string& fallback) const {
    const std::string name = text(field, fallback);
    if (name == "gelu") return Activation::gelu;
    if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::gelu_tanh;
    if (name == "relu") return Activation::relu;
    fail(field, nlohmann::json(name), "one of \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\", \"relu\"",
         "\"" + fallback + "\"");
  }

  /// "architectures": a list of class names (empty when absent).
  std::vector<std::string> architectures() const {
    const auto* v = find("architectures");
    std::vector<std::string> out;
    if (!v) return out;
    if (!v->is_array()) fail("architectures", *v, "a list of class names", "none");
    for (const auto& a : *v) {
      if (!a.is_string()) fail("architectures", *v, "a list of class names", "none");
      out.push_back(a.get<std::string>());
    }
    return out;
  }

  /// HF's num_labels: the size of "id2label" when present, else "num_labels", else 2.
  int64_t num_labels() const {
    if (const auto* v = find("id2label")) {
      if (!v->is_object() || v->empty()) fail("id2label", *v, "an object mapping label ids to names", "2 labels");
      return static_cast<int64_t>(v->size());
    }
    return integer("num_labels", 2);
  }

  [[noreturn]] void fail(const char* field, const nlohmann::json& value, const std::string& expected,
                         const std::string& fallback) const {
    std::string seen = value.dump();
    if (seen.size() > 60) seen = seen.substr(0, 57) + "...";
    throw HubConfigError(str("config file '", path_, "': field \"", field, "\" is ", seen, "; expected ", expected,
                             ". Fix the value, or remove the field to use HF's default (", fallback, ")."));
  }

 private:
  const nlohmann::json* find(const char* field) const {
    const auto it = json_.find(field);
    return it == json_.end() || it->is_null() ? nullptr : &*it;
  }

  std::string path_;
  nlohmann::json json_;
};

}  // namespace detail

}  // namespace models

// lora::peft: adapters in Hugging Face PEFT's on-disk layout, both ways.
//
// A PEFT LoRA adapter is a folder with
//   adapter_model.safetensors  "base_model.model.<HF module path>.lora_A.weight" (r, in),
//                              "....lora_B.weight" (out, r), "....lora_magnitude_vector" (out)
//                              for DoRA, and the modules_to_save under their plain keys
//                              "base_model.model.<HF module path>.<param>"; metadata {"format": "pt"}
//   adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules, ... (sorted keys)
//
// The library does not know the Hugging Face model: an HfMapping says how this model's module
// paths read in HF (identity by default) and which layers are transformers' Conv1D there (GPT-2's
// c_attn, c_proj, c_fc), for which PEFT sets fan_in_fan_out. PEFT keeps A (r, in) and B (out, r)
// for Conv1D layers as for nn.Linear (only the delta it adds to the (in, out) weight is
// transposed), so the tensors are written and read the same for both.
//
// load() checks the whole folder against the model before it changes anything: unknown
// modules (TargetError), shapes and ranks (ShapeError), options this library cannot reproduce
// (ConfigError), unreadable files (FileError). Then it creates the adapter with inject() and
// copies the tensors.
#pragma once

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/stat.h>
#include <torch/nn/module.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "adapters.hpp"
#include "config.hpp"
#include "detail/match.hpp"
#include "error.hpp"
#include "init.hpp"
#include "inject.hpp"
#include "safetensors.hpp"
#include "scaling.hpp"

namespace lora::peft {

inline constexpr const char* kConfigFile = "adapter_config.json";
inline constexpr const char* kWeightsFile = "adapter_model.safetensors";
/// What PeftModel.save_pretrained puts before every module path.
inline constexpr const char* kPrefix = "base_model.model.";

/// How this model's module paths read in the Hugging Face model the adapter is for.
struct HfMapping {
  /// Our module path -> HF module path. Empty: the same path (this project's models use HF's
  /// names, e.g. "transformer.h.0.attn.c_attn", "distilbert.transformer.layer.0.attention.q_lin").
  std::function<std::string(const std::string&)> to_hf;
  /// Layers (our paths) that are transformers' Conv1D in HF, as in Config::targets: a name
  /// matching the path or its trailing components ("c_attn", "attn.c_proj"), or "re:<regex>".
  std::vector<std::string> conv1d;

  std::string hf_path(const std::string& path) const { return to_hf ? to_hf(path) : path; }
  bool is_conv1d(const std::string& path) const {
    for (const auto& c : conv1d)
      if (detail::Pattern(c, "conv1d").matches(path)) return true;
    return false;
  }
};

/// adapter_config.json: the fields this library reads and writes. Every other field of a file
/// read is kept in `extra` (and written back by write_config).
struct AdapterConfig {
  std::string peft_type = "LORA";
  int64_t r = 8;
  double lora_alpha = 8;
  double lora_dropout = 0;
  /// target_modules as a list of names (PEFT matches a module path equal to a name or ending
  /// in "." + name) ...
  std::vector<std::string> target_modules;
  /// ... or as one string: a regex a whole module path must match, or "all-linear".
  std::string target_modules_regex;
  /// exclude_modules (PEFT >= 0.14), in the same two forms.
  std::vector<std::string> exclude_modules;
  std::string exclude_modules_regex;
  std::string bias = "none";
  bool use_rslora = false;
  bool use_dora = false;
  bool fan_in_fan_out = false;
  bool inference_mode = true;
  /// modules_to_save; nullopt is JSON null. PEFT matches a module whose path ends with a name.
  std::optional<std::vector<std::string>> modules_to_save;
  std::string base_model_name_or_path;  ///< "" is JSON null
  std::string task_type;                ///< "" is JSON null; e.g. "CAUSAL_LM", "SEQ_CLS"
  /// true, false, "gaussian", "pissa", "olora", ...
  nlohmann::json init_lora_weights = true;
  /// rank_pattern / alpha_pattern in file order: PEFT takes the first key K for which
  /// "(.*\.)?(K)$" matches the module path.
  std::vector<std::pair<std::string, int64_t>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
};

/// What save() writes besides what the adapter itself says.
struct SaveOptions {
  HfMapping mapping;
  std::string base_model_name_or_path;  ///< e.g. "gpt2"; "" writes null
  std::string task_type;                ///< e.g. "CAUSAL_LM", "SEQ_CLS"; "" writes null
  bool inference_mode = true;
};

/// How load() creates the adapter.
struct LoadOptions {
  HfMapping mapping;
  std::string adapter_name = "default";  ///< the name the adapter gets on the model
  bool freeze_base = true;               ///< as Config::freeze_base
};

namespace detail {

using lora::detail::str;

inline bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }
inline bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

/// `s` with every ECMAScript/Python regex metacharacter escaped.
inline std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c != '\0' && std::strchr(".^$|()[]{}*+?\\", c)) out += '\\';
    out += c;
  }
  return out;
}

/// PEFT's get_pattern_key: the value of the first key K (in order) for which "(.*\.)?(K)$"
/// matches `path`, or nullptr.
template <typename V>
const V* pattern_value(const std::vector<std::pair<std::string, V>>& patterns, const std::string& path,
                       const char* what) {
  for (const auto& kv : patterns) {
    const auto re = lora::detail::compile_regex("(.*\\.)?(" + kv.first + ")$", what);
    if (std::regex_match(path, re)) return &kv.second;
  }
  return nullptr;
}

/// PEFT's target / exclude rule: a list entry equal to the path or a trailing part of it, or a
/// string regex matching the whole path.
inline bool peft_selects(const std::vector<std::string>& names, const std::string& regex, const std::string& path,
                         const char* what) {
  if (!regex.empty()) return std::regex_match(path, lora::detail::compile_regex(regex, what));
  for (const auto& n : names)
    if (lora::detail::suffix_match(path, n)) return true;
  return false;
}

inline bool same_number(double a, double b) {
  return a == b || std::abs(a - b) <= 1e-12 * std::max(std::abs(a), std::abs(b));
}

/// The lora_alpha that PEFT's rule (alpha / r, or alpha / sqrt(r) with use_rslora) needs to give
/// this layer its scale s. Policies other than alpha/r and rsLoRA (constant alpha, rank
/// proportional, custom) have no PEFT field: they are exported as alpha/r with lora_alpha = s * r,
/// which gives PEFT the very same s (the configured alpha is then not what the file says).
inline double exported_alpha(int64_t rank, double alpha, double scale, bool rslora) {
  const double r = static_cast<double>(rank);
  if (rslora) return same_number(alpha / std::sqrt(r), scale) ? alpha : scale * std::sqrt(r);
  return same_number(alpha / r, scale) ? alpha : scale * r;
}

/// A number as JSON: an integer when it is one (PEFT writes lora_alpha as an int).
inline nlohmann::ordered_json number(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 9e15) return static_cast<int64_t>(v);
  return v;
}

/// Writes `text` to `path` atomically: "<path>.tmp.<pid>", fsync, rename.
inline void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = str(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw FileError(str("cannot create '", tmp, "' to save '", path, "': ", std::strerror(errno)));
  bool ok = safetensors::detail::write_all(fd, text.data(), text.size()) && ::fsync(fd) == 0;
  int err = ok ? 0 : errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    throw FileError(str("cannot save '", path, "': ", std::strerror(err)));
  }
}

/// Reads the JSON file at `path` (order kept); FileError when it cannot.
inline nlohmann::ordered_json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw FileError(str("cannot open PEFT adapter config '", path,
                        "'. A PEFT adapter folder holds adapter_config.json and adapter_model.safetensors."));
  try {
    return nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw FileError(str("PEFT adapter config '", path, "' is not valid JSON (", e.what(), ")."));
  }
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

/// Every module path of the model (our paths) -> its HF path; throws on two paths mapped to one.
inline std::map<std::string, std::string> hf_to_ours(torch::nn::Module& model, const HfMapping& mapping) {
  std::map<std::string, std::string> out;
  for (const auto& m : lora::detail::user_modules(model)) {
    const auto hf = mapping.hf_path(m.first);
    auto [it, fresh] = out.emplace(hf, m.first);
    if (!fresh && it->second != m.first)
      throw ConfigError(str("lora::peft: the HfMapping sends both '", it->second, "' and '", m.first, "' to '", hf,
                            "'; it must give each module its own HF path."));
  }
  return out;
}

}  // namespace detail

/// Reads and checks adapter_config.json. Throws FileError for a malformed file or field, and
/// ConfigError for a valid PEFT option this library does not support (another peft_type, a
/// bias other than "none", layers_to_transform, lora_bias, trainable tokens, ...).
inline AdapterConfig read_config(const std::string& path) {
  using detail::str;
  const auto j = detail::read_json(path);
  if (!j.is_object()) throw FileError(str("PEFT adapter config '", path, "' holds a JSON ", j.type_name(), ", not an object."));
  const detail::Fields f(j, path);
  AdapterConfig c;
  c.peft_type = f.text("peft_type", "");
  if (c.peft_type != "LORA")
    f.unsupported("peft_type", "this library loads LoRA adapters (peft_type \"LORA\", with use_dora for DoRA) only.");
  const auto* r = f.find("r");
  if (!r || !r->is_number_integer() || r->get<int64_t>() <= 0) f.fail("r", "a positive integer");
  c.r = r->get<int64_t>();
  c.lora_alpha = f.number("lora_alpha", 8);
  c.lora_dropout = f.number("lora_dropout", 0);
  if (!(c.lora_dropout >= 0 && c.lora_dropout < 1)) f.fail("lora_dropout", "a probability in [0, 1)");
  c.target_modules = f.names("target_modules", &c.target_modules_regex);
  if (c.target_modules.empty() && c.target_modules_regex.empty())
    f.fail("target_modules", "the modules the adapter targets (a list of names, a regex or \"all-linear\")");
  c.exclude_modules = f.names("exclude_modules", &c.exclude_modules_regex);
  c.bias = f.text("bias", "none");
  if (c.bias != "none")
    f.unsupported("bias", "the adapter also trains biases; only bias \"none\" is supported (retrain with bias=\"none\").");
  c.use_rslora = f.boolean("use_rslora", false);
  c.use_dora = f.boolean("use_dora", false);
  c.fan_in_fan_out = f.boolean("fan_in_fan_out", false);
  c.inference_mode = f.boolean("inference_mode", true);
  if (f.find("modules_to_save")) c.modules_to_save = f.names("modules_to_save", nullptr);
  c.base_model_name_or_path = f.text("base_model_name_or_path", "");
  c.task_type = f.text("task_type", "");
  if (j.contains("init_lora_weights")) c.init_lora_weights = nlohmann::json::parse(j["init_lora_weights"].dump());
  detail::init_from_peft(c.init_lora_weights, path);  // checks it
  c.rank_pattern = f.pattern<int64_t>("rank_pattern", true);
  for (const auto& kv : c.rank_pattern)
    if (kv.second <= 0) f.fail("rank_pattern", "positive ranks");
  c.alpha_pattern = f.pattern<double>("alpha_pattern", false);

  // Options that change what the adapter computes and that this library does not implement.
  if (f.find("layers_to_transform"))
    f.unsupported("layers_to_transform", "adapters restricted to some layer indices are not supported.");
  if (f.boolean("lora_bias", false)) f.unsupported("lora_bias", "a bias on lora_B is not supported.");
  if (f.boolean("use_qalora", false)) f.unsupported("use_qalora", "QA-LoRA is not supported.");
  for (const char* k : {"trainable_token_indices", "layer_replication", "alora_invocation_tokens"})
    if (f.find(k)) f.unsupported(k, "this PEFT feature is not supported.");
  if (const auto* tp = f.find("target_parameters"); tp && !(tp->is_array() && tp->empty()))
    f.unsupported("target_parameters", "LoRA on raw nn.Parameters is not supported.");

  for (const auto& [k, v] : j.items())
    if (!detail::known_fields().count(k)) c.extra[k] = v;
  return c;
}

/// adapter_config.json's content for `c`: every field of c.extra, then the fields above, keys
/// sorted as PEFT writes them (json.dumps(..., sort_keys=True)).
inline nlohmann::json to_json(const AdapterConfig& c) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : c.extra.items()) j[k] = nlohmann::json::parse(v.dump());
  j["peft_type"] = c.peft_type;
  j["r"] = c.r;
  j["lora_alpha"] = nlohmann::json::parse(detail::number(c.lora_alpha).dump());
  j["lora_dropout"] = c.lora_dropout;
  if (!c.target_modules_regex.empty())
    j["target_modules"] = c.target_modules_regex;
  else
    j["target_modules"] = c.target_modules;
  if (!c.exclude_modules_regex.empty())
    j["exclude_modules"] = c.exclude_modules_regex;
  else if (!c.exclude_modules.empty())
    j["exclude_modules"] = c.exclude_modules;
  j["bias"] = c.bias;
  j["use_rslora"] = c.use_rslora;
  j["use_dora"] = c.use_dora;
  j["fan_in_fan_out"] = c.fan_in_fan_out;
  j["inference_mode"] = c.inference_mode;
  j["modules_to_save"] = c.modules_to_save ? nlohmann::json(*c.modules_to_save) : nlohmann::json(nullptr);
  j["base_model_name_or_path"] =
      c.base_model_name_or_path.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.base_model_name_or_path);
  j["task_type"] = c.task_type.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.task_type);
  j["init_lora_weights"] = c.init_lora_weights;
  j["rank_pattern"] = nlohmann::json::object();
  for (const auto& [k, v] : c.rank_pattern) j["rank_pattern"][k] = v;
  j["alpha_pattern"] = nlohmann::json::object();
  for (const auto& [k, v] : c.alpha_pattern) j["alpha_pattern"][k] = nlohmann::json::parse(detail::number(v).dump());
  for (const char* k : {"layers_to_transform", "layers_pattern", "revision"})
    if (!j.contains(k)) j[k] = nullptr;
  return j;
}

/// Writes adapter_config.json for `c` at `path`, atomically.
inline void write_config(const std::string& path, const AdapterConfig& c) {
  detail::write_text_atomic(path, to_json(c).dump(2) + "\n");
}

namespace detail {

/// The module of a kept-trainable parameter path: its longest prefix that a keep_trainable
/// pattern matches.
inline std::string kept_module(const std::string& param_path, const std::vector<std::string>& keep) {
  std::string best;
  for (size_t pos = param_path.find('.'); pos != std::string::npos; pos = param_path.find('.', pos + 1)) {
    const auto prefix = param_path.substr(0, pos);
    for (const auto& k : keep)
      if (lora::detail::Pattern(k, "keep_trainable").matches(prefix)) best = prefix;
  }
  if (best.empty())
    throw Error(str("lora::peft: cannot tell which kept-trainable module parameter '", param_path, "' belongs to."));
  return best;
}

/// rank_pattern / alpha_pattern entries that give each layer (HF path) its (r, alpha) under
/// PEFT's rule, with the defaults r0 / alpha0 elsewhere. Tries `rank_hint` / `alpha_hint` first
/// (the user's own patterns), then one full-path key per layer that differs from the defaults.
inline void make_patterns(const std::vector<std::tuple<std::string, int64_t, double>>& layers, int64_t r0,
                          double alpha0, const std::map<std::string, int64_t>* rank_hint,
                          const std::map<std::string, double>* alpha_hint, AdapterConfig& c) {
  auto reproduces = [&](const std::vector<std::pair<std::string, int64_t>>& rp,
                        const std::vector<std::pair<std::string, double>>& ap) {
    for (const auto& [path, r, a] : layers) {
      const auto* rv = pattern_value(rp, path, "rank_pattern");
      const auto* av = pattern_value(ap, path, "alpha_pattern");
      if ((rv ? *rv : r0) != r || !same_number(av ? *av : alpha0, a)) return false;
    }
    return true;
  };
  if (rank_hint && alpha_hint) {
    std::vector<std::pair<std::string, int64_t>> rp(rank_hint->begin(), rank_hint->end());
    std::vector<std::pair<std::string, double>> ap(alpha_hint->begin(), alpha_hint->end());
    if (reproduces(rp, ap)) {
      c.rank_pattern = rp;
      c.alpha_pattern = ap;
      return;
    }
  }
  for (const bool anchored : {false, true}) {
    std::map<std::string, int64_t> rp;  // sorted, as written
    std::map<std::string, double> ap;
    for (const auto& [path, r, a] : layers) {
      const auto key = anchored ? "^" + regex_escape(path) : path;
      if (r != r0) rp[key] = r;
      if (!same_number(a, alpha0)) ap[key] = a;
    }
    std::vector<std::pair<std::string, int64_t>> rv(rp.begin(), rp.end());
    std::vector<std::pair<std::string, double>> av(ap.begin(), ap.end());
    if (reproduces(rv, av)) {
      c.rank_pattern = rv;
      c.alpha_pattern = av;
      return;
    }
  }
  throw Error("lora::peft::save: could not express the per-layer ranks and alphas as PEFT patterns.");
}

}  // namespace detail

/// The adapter_config.json that save() writes for `adapters`.
inline AdapterConfig make_config(const Adapters& adapters, const SaveOptions& options = {}) {
  using detail::str;
  const Config& cfg = adapters.config();
  if (adapters.layers().empty())
    throw ConfigError(str("lora::peft::save: adapter '", adapters.name(), "' has no layer (was it removed?)."));
  const bool rslora = cfg.scaling.is_rslora;
  AdapterConfig c;
  c.r = cfg.rank;
  c.lora_alpha = detail::exported_alpha(cfg.rank, cfg.alpha, cfg.scaling.scale(cfg.alpha, cfg.rank), rslora);
  c.lora_dropout = cfg.dropout;
  c.use_rslora = rslora;
  c.use_dora = cfg.use_dora;
  c.inference_mode = options.inference_mode;
  c.base_model_name_or_path = options.base_model_name_or_path;
  c.task_type = options.task_type;
  c.init_lora_weights = nlohmann::json::parse(detail::init_to_peft(cfg.init).dump());

  std::vector<std::tuple<std::string, int64_t, double>> per_layer;  // (HF path, r, exported alpha)
  std::set<std::string> hf_paths;
  for (const auto& l : adapters.layers()) {
    const auto hf = options.mapping.hf_path(l.path);
    if (!hf_paths.insert(hf).second)
      throw ConfigError(str("lora::peft::save: the HfMapping sends two adapted layers to '", hf, "'."));
    per_layer.emplace_back(hf, l.rank, detail::exported_alpha(l.rank, l.alpha, l.scale, rslora));
    c.fan_in_fan_out |= options.mapping.is_conv1d(l.path);
  }

  // target_modules: the Config's own names when they mean the same in HF (identity mapping,
  // plain names: PEFT matches them as inject() does), else the adapted layers' full HF paths
  // (also with Config::exclude: exclude_modules exists in PEFT >= 0.14 only).
  const bool identity = !options.mapping.to_hf;
  bool plain = identity && cfg.exclude.empty();
  for (const auto& t : cfg.targets) plain &= t != "all-linear" && !detail::starts_with(t, "re:");
  if (plain) {
    c.target_modules = cfg.targets;
  } else {
    c.target_modules.assign(hf_paths.begin(), hf_paths.end());
  }

  // Patterns: the user's own when they mean the same in HF (identity mapping, alpha as
  // configured, no "re:" target: those come from load(), whose keys are escaped paths; checked
  // below layer by layer); else one full-path key per layer that differs from r / lora_alpha.
  bool hint = identity;
  for (const auto& t : cfg.targets) hint &= !detail::starts_with(t, "re:");
  for (const auto& l : adapters.layers())
    hint &= detail::same_number(detail::exported_alpha(l.rank, l.alpha, l.scale, rslora), l.alpha);
  detail::make_patterns(per_layer, c.r, c.lora_alpha, hint ? &cfg.rank_pattern : nullptr,
                        hint ? &cfg.alpha_pattern : nullptr, c);

  // modules_to_save: the kept-trainable modules, by full HF path.
  if (!adapters.kept_parameters().empty()) {
    std::vector<std::string> mods;
    for (const auto& kv : adapters.kept_parameters()) {
      const auto m = options.mapping.hf_path(detail::kept_module(kv.first, cfg.keep_trainable));
      if (std::find(mods.begin(), mods.end(), m) == mods.end()) mods.push_back(m);
    }
    c.modules_to_save = mods;
  }
  return c;
}

/// The tensors save() writes: "base_model.model.<HF path>.lora_A.weight", ".lora_B.weight",
/// ".lora_magnitude_vector" (DoRA), and each kept-trainable parameter under
/// "base_model.model.<HF module path>.<param>" (PEFT strips "modules_to_save.<adapter>." on save).
inline torch::OrderedDict<std::string, torch::Tensor> make_state(const Adapters& adapters,
                                                                 const SaveOptions& options = {}) {
  const Config& cfg = adapters.config();
  torch::OrderedDict<std::string, torch::Tensor> out;
  const auto state = adapters.state_dict();
  for (const auto& l : adapters.layers()) {
    const auto hf = std::string(kPrefix) + options.mapping.hf_path(l.path);
    out.insert(hf + ".lora_A.weight", state[l.path + ".lora_A.weight"]);
    out.insert(hf + ".lora_B.weight", state[l.path + ".lora_B.weight"]);
    if (const auto* m = state.find(l.path + "." + AdapterBank::kMagnitude)) out.insert(hf + ".lora_magnitude_vector", *m);
  }
  for (const auto& [path, t] : adapters.kept_parameters()) {
    const auto module = detail::kept_module(path, cfg.keep_trainable);
    out.insert(std::string(kPrefix) + options.mapping.hf_path(module) + path.substr(module.size()), t.detach());
  }
  return out;
}

/// Writes `adapters` to folder `dir` (created if needed) as PEFT's save_pretrained does:
/// adapter_model.safetensors (metadata {"format": "pt"}) and adapter_config.json, each written
/// atomically. Loads in Python with PeftModel.from_pretrained(base_model, dir).
inline void save(const Adapters& adapters, const std::string& dir, const SaveOptions& options = {}) {
  const auto config = make_config(adapters, options);  // checks before writing anything
  const auto state = make_state(adapters, options);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw FileError(detail::str("lora::peft::save: cannot create folder '", dir, "': ", ec.message()));
  safetensors::save((std::filesystem::path(dir) / kWeightsFile).string(), state, {{"format", "pt"}});
  write_config((std::filesystem::path(dir) / kConfigFile).string(), config);
}

/// Reads a PEFT adapter folder and adds it to `model` (as inject() would, with the file's
/// config), then copies its tensors. Everything is checked first; on error the model is
/// unchanged. Returns the handle of the new adapter (named options.adapter_name).
inline Adapters load(torch::nn::Module& model, const std::string& dir, const LoadOptions& options = {}) {
  using detail::str;
  namespace fs = std::filesystem;
  const auto config_path = (fs::path(dir) / kConfigFile).string();
  const auto weights_path = (fs::path(dir) / kWeightsFile).string();
  if (!fs::is_regular_file(weights_path)) {
    std::string hint = fs::is_regular_file(fs::path(dir) / "adapter_model.bin")
                           ? " It holds adapter_model.bin (a pickle), which is not read: save with "
                             "safe_serialization=True (PEFT's default)."
                           : "";
    throw FileError(str("PEFT adapter folder '", dir, "' lacks ", kWeightsFile, ".", hint));
  }
  const AdapterConfig pc = read_config(config_path);
  const safetensors::File file(weights_path);

  // The model, in HF paths.
  const auto to_ours = detail::hf_to_ours(model, options.mapping);
  const auto layers = adaptable_layers(model);
  std::map<std::string, const AdaptableLayer*> layer_by_hf;
  std::vector<std::string> hf_layer_paths;
  for (const auto& l : layers) {
    const auto hf = options.mapping.hf_path(l.path);
    layer_by_hf[hf] = &l;
    hf_layer_paths.push_back(hf);
  }

  // modules_to_save: PEFT wraps every module whose path ends with one of the names.
  std::map<std::string, std::shared_ptr<torch::nn::Module>> kept;  // HF module path -> module
  if (pc.modules_to_save) {
    for (const auto& m : lora::detail::user_modules(model)) {
      const auto hf = options.mapping.hf_path(m.first);
      bool match = false;
      for (const auto& n : *pc.modules_to_save) match |= !n.empty() && detail::ends_with(hf, n);
      if (!match) continue;
      bool covered = false;  // inside a module already kept
      for (const auto& k : kept) covered |= detail::starts_with(hf, k.first + ".");
      if (!covered) kept.emplace(hf, m.second);
    }
  }

  // Sort the file's tensors.
  struct LayerKeys {
    std::string A, B, M;
  };
  std::map<std::string, LayerKeys> per_layer;                    // HF layer path -> keys
  std::map<std::string, std::string> kept_keys;                  // "<HF module>.<param>" -> file key
  std::vector<std::string> strays;                               // keys of neither kind
  const std::string prefix = kPrefix;
  for (const auto& t : file.tensors())
    if (!detail::starts_with(t.name, prefix))
      throw FileError(str("PEFT adapter file '", weights_path, "': tensor '", t.name, "' does not start with '",
                          prefix, "'. This is not a file written by PeftModel.save_pretrained."));
  for (const auto& t : file.tensors()) {
    const auto& key = t.name;
    const auto rest = key.substr(prefix.size());
    std::string path;
    auto layer_key = [&](const char* suffix) {
      if (!detail::ends_with(rest, suffix)) return false;
      path = rest.substr(0, rest.size() - std::strlen(suffix));
      return true;
    };
    if (layer_key(".lora_A.weight")) {
      per_layer[path].A = key;
    } else if (layer_key(".lora_B.weight")) {
      per_layer[path].B = key;
    } else if (layer_key(".lora_magnitude_vector") || layer_key(".lora_magnitude_vector.weight")) {
      if (!per_layer[path].M.empty())
        throw FileError(str("PEFT adapter file '", weights_path, "' holds two magnitude vectors for '", path, "'."));
      per_layer[path].M = key;
    } else {
      bool found = false;
      for (const auto& k : kept)
        if (detail::starts_with(rest, k.first + ".")) found = true;
      if (found)
        kept_keys[rest] = key;
      else
        strays.push_back(key);
    }
  }
  if (per_layer.empty())
    throw FileError(str("PEFT adapter file '", weights_path, "' holds no lora_A / lora_B tensors."));

  // Modules the model lacks first: the likeliest mistake (another model, another mapping).
  for (const auto& kv : per_layer) {
    const auto& hf = kv.first;
    if (layer_by_hf.count(hf)) continue;
    const auto known = to_ours.count(hf) ? str(" ('", hf, "' is a module of the model, but not a Linear layer)") : "";
    throw TargetError(str("PEFT adapter '", dir, "' adapts module '", hf, "', which the model lacks", known,
                          ". Closest Linear layers: ", lora::detail::quoted_list(lora::detail::closest(hf, hf_layer_paths)),
                          ". The adapter is for another model, or the HfMapping does not fit this model."));
  }
  for (const auto& key : strays) {
    const bool lora_part = key.find("lora_") != std::string::npos;
    throw TargetError(str("PEFT adapter file '", weights_path, "': tensor '", key, "' ",
                          lora_part ? "is a kind of LoRA tensor this library does not load (lora_A/lora_B weights and "
                                      "DoRA magnitudes of Linear layers only; no embedding LoRA, no adapter names in "
                                      "keys)"
                                    : "belongs to no module of modules_to_save of the model",
                          ". Check that the adapter was trained on this model."));
  }

  // Each adapted layer: known, complete, with consistent shapes and ranks.
  Config cfg;
  cfg.rank = pc.r;
  cfg.alpha = pc.lora_alpha;
  cfg.dropout = pc.lora_dropout;
  cfg.use_dora = pc.use_dora;
  cfg.scaling = pc.use_rslora ? scaling::alpha_over_sqrt_rank() : scaling::alpha_over_rank();
  cfg.init = detail::init_from_peft(pc.init_lora_weights, config_path);
  cfg.adapter_name = options.adapter_name;
  cfg.freeze_base = options.freeze_base;
  cfg.allow_rank_above_min = true;  // PEFT allows r > min(in, out); the shapes are checked below
  cfg.targets.clear();
  torch::OrderedDict<std::string, torch::Tensor> state;
  auto check_dtype = [&](const std::string& key) {
    const auto& d = file.info(key).dtype;
    if (d != "F32" && d != "F16" && d != "BF16" && d != "F64")
      throw ShapeError(str("PEFT adapter file '", weights_path, "': tensor '", key, "' has dtype ", d,
                           "; adapter tensors must be floating point."));
  };
  auto shape_str = [](const std::vector<int64_t>& s) { return str(at::IntArrayRef(s)); };
  for (const auto& [hf, keys] : per_layer) {
    const AdaptableLayer& l = *layer_by_hf.at(hf);
    if (keys.A.empty() || keys.B.empty())
      throw FileError(str("PEFT adapter file '", weights_path, "' has ", keys.A.empty() ? "no lora_A" : "no lora_B",
                          " tensor for layer '", hf, "' (it has ", keys.A.empty() ? keys.B : keys.A, ")."));
    if (pc.use_dora && keys.M.empty())
      throw FileError(str("PEFT adapter '", dir, "' has use_dora true but no lora_magnitude_vector for layer '", hf,
                          "'."));
    if (!pc.use_dora && !keys.M.empty())
      throw ConfigError(str("PEFT adapter '", dir, "' holds a DoRA magnitude for layer '", hf,
                            "' but adapter_config.json says use_dora false. Fix use_dora."));
    for (const auto* k : {&keys.A, &keys.B, &keys.M})
      if (!k->empty()) check_dtype(*k);
    const auto& a = file.info(keys.A).shape;
    const auto& b = file.info(keys.B).shape;
    const int64_t in = l.in_features(), out = l.out_features();
    if (a.size() != 2 || b.size() != 2 || a[1] != in || b[0] != out || a[0] != b[1])
      throw ShapeError(str("PEFT adapter '", dir, "': layer '", hf, "' has lora_A ", shape_str(a), " and lora_B ",
                           shape_str(b), " but the model's layer is (out ", out, ", in ", in,
                           "): expected lora_A (r, ", in, ") and lora_B (", out,
                           ", r). The adapter was trained on another model or model size."));
    if (!keys.M.empty() && file.info(keys.M).shape != std::vector<int64_t>{out})
      throw ShapeError(str("PEFT adapter '", dir, "': the magnitude vector of layer '", hf, "' has shape ",
                           shape_str(file.info(keys.M).shape), "; expected (", out, ")."));
    const int64_t r_file = a[0];
    const auto* rp = detail::pattern_value(pc.rank_pattern, hf, "rank_pattern");
    const auto* ap = detail::pattern_value(pc.alpha_pattern, hf, "alpha_pattern");
    const int64_t r = rp ? *rp : pc.r;
    const double alpha = ap ? *ap : pc.lora_alpha;
    if (r != r_file)
      throw ShapeError(str("PEFT adapter '", dir, "': layer '", hf, "' has rank ", r_file,
                           " in the file but adapter_config.json gives it r = ", r,
                           rp ? " (from rank_pattern)" : " (no rank_pattern key matches it)",
                           ". The two files do not belong together."));
    cfg.targets.push_back("re:" + detail::regex_escape(l.path));
    if (r != cfg.rank) cfg.rank_pattern[detail::regex_escape(l.path)] = r;
    if (alpha != cfg.alpha) cfg.alpha_pattern[detail::regex_escape(l.path)] = alpha;
    state.insert(l.path + ".lora_A.weight", file.tensor(keys.A));
    state.insert(l.path + ".lora_B.weight", file.tensor(keys.B));
    if (!keys.M.empty()) state.insert(l.path + "." + AdapterBank::kMagnitude, file.tensor(keys.M));
  }

  // target_modules (and exclude_modules) must select exactly the layers in the file; for
  // "all-linear" (whose output-layer rule depends on the HF class) the file decides.
  if (pc.target_modules_regex != "all-linear") {
    for (const auto& [path, module] : lora::detail::user_modules(model)) {
      const auto hf = options.mapping.hf_path(path);
      if (!detail::peft_selects(pc.target_modules, pc.target_modules_regex, hf, "target_modules")) continue;
      if (detail::peft_selects(pc.exclude_modules, pc.exclude_modules_regex, hf, "exclude_modules")) continue;
      if (!layer_by_hf.count(hf)) {
        // PEFT matches list entries against every module and refuses non-Linear ones too.
        if (!pc.target_modules_regex.empty()) continue;
        throw ConfigError(str("PEFT adapter config '", config_path, "': target_modules selects '", hf,
                              "', which is not a Linear layer of this model (", module->name(),
                              "). The adapter is for another model."));
      }
      if (!per_layer.count(hf))
        throw FileError(str("PEFT adapter '", dir, "': target_modules selects layer '", hf, "' but ", kWeightsFile,
                            " has no tensors for it. The two files do not belong together."));
    }
    for (const auto& kv : per_layer)
      if (!detail::peft_selects(pc.target_modules, pc.target_modules_regex, kv.first, "target_modules") ||
          detail::peft_selects(pc.exclude_modules, pc.exclude_modules_regex, kv.first, "exclude_modules"))
        throw ConfigError(str("PEFT adapter '", dir, "': ", kWeightsFile, " has tensors for layer '", kv.first,
                              "', which target_modules ", pc.target_modules_regex.empty() ? "" : "(a regex) ",
                              "does not select. The two files do not belong together."));
  }

  // The inject() patterns must give each layer exactly its (r, alpha): check before changing anything.
  for (const auto& l : layers) {
    const auto hf = options.mapping.hf_path(l.path);
    if (!per_layer.count(hf)) continue;
    const auto* rv = lora::detail::pattern_value(cfg.rank_pattern, l.path, "rank_pattern");
    const auto* av = lora::detail::pattern_value(cfg.alpha_pattern, l.path, "alpha_pattern");
    const auto* rp = detail::pattern_value(pc.rank_pattern, hf, "rank_pattern");
    const auto* ap = detail::pattern_value(pc.alpha_pattern, hf, "alpha_pattern");
    if ((rv ? *rv : cfg.rank) != (rp ? *rp : pc.r) || (av ? *av : cfg.alpha) != (ap ? *ap : pc.lora_alpha)) {
      // A layer path that ends with another's: anchor every key.
      std::map<std::string, int64_t> rank2;
      std::map<std::string, double> alpha2;
      for (const auto& kv : cfg.rank_pattern) rank2["^" + kv.first] = kv.second;
      for (const auto& kv : cfg.alpha_pattern) alpha2["^" + kv.first] = kv.second;
      cfg.rank_pattern = rank2;
      cfg.alpha_pattern = alpha2;
      break;
    }
  }

  // modules_to_save: each kept module's parameters all in the file, or none of them (PEFT then
  // keeps the module's current values, as it does for missing keys).
  std::vector<std::pair<std::string, std::string>> kept_copies;  // (our param path, file key)
  for (const auto& [hf, module] : kept) {
    std::vector<std::pair<std::string, torch::Tensor>> params;
    for (const auto& p : module->named_parameters(/*recurse=*/true))
      if (!lora::detail::is_internal_path(p.key())) params.emplace_back(p.key(), p.value());
    size_t present = 0;
    for (const auto& [name, t] : params) present += kept_keys.count(hf + "." + name);
    if (present != 0 && present != params.size())
      throw FileError(str("PEFT adapter '", dir, "': modules_to_save module '", hf, "' has ", present, " of its ",
                          params.size(), " parameters in ", kWeightsFile, "; expected all of them."));
    for (const auto& [name, t] : params) {
      const auto it = kept_keys.find(hf + "." + name);
      if (it == kept_keys.end()) continue;
      check_dtype(it->second);
      if (at::IntArrayRef(file.info(it->second).shape) != t.sizes())
        throw ShapeError(str("PEFT adapter '", dir, "': tensor '", it->second, "' has shape ",
                             shape_str(file.info(it->second).shape), " but the model's '", hf, ".", name, "' has shape ",
                             t.sizes(), "."));
      kept_copies.emplace_back(to_ours.at(hf) + "." + name, it->second);
    }
    cfg.keep_trainable.push_back("re:" + detail::regex_escape(to_ours.at(hf)));
  }
  for (const auto& [rest, key] : kept_keys) {
    bool used = false;
    for (const auto& kc : kept_copies) used |= kc.second == key;
    if (!used)
      throw TargetError(str("PEFT adapter file '", weights_path, "': tensor '", key,
                            "' is no parameter of the modules_to_save modules of the model."));
  }

  // The compatibility path (plain torch::nn::Linear) has no LoRA dropout, which only acts in
  // training: the file's lora_dropout is kept for lora::Linear models only.
  for (const auto& kv : per_layer)
    if (layer_by_hf.at(kv.first)->plain) cfg.dropout = 0;

  // Apply: inject() checks the rest (ranks against layer sizes, the adapter name) before it
  // changes anything; the copies cannot fail after it.
  Adapters handle = inject(model, cfg);
  handle.load_state_dict(state, /*strict=*/true);
  torch::NoGradGuard no_grad;
  for (const auto& [path, key] : kept_copies)
    for (const auto& kv : handle.kept_parameters())
      if (kv.first == path) kv.second.copy_(file.tensor(key));
  return handle;
}

}  // namespace lora::peft

// A pretraining checkpoint: one .safetensors file holding everything a resumed run needs, so that
// it is written in one atomic step (lora::safetensors::save: a temporary file, fsync, rename):
//   model.<name>             every parameter (each once: a tied weight under its first name)
//   adamw.<name>.exp_avg     AdamW's moments (recipe.hpp)
//   adamw.<name>.exp_avg_sq
//   __metadata__["lora_pretrain"]  JSON: the step reached, the recipe (the flags that define the
//                            run, compared on resume), the data's fingerprint, the data-order
//                            cursor, each parameter's AdamW step count, the curve so far and the
//                            training time so far.
// The data order and every random draw (masks, dropout) are functions of (seed, step), so the
// step is the whole of the data-order and RNG state (data/corpus.hpp, pretrain/masking.hpp).
#pragma once

#include <torch/torch.h>

#include <lora/safetensors.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <set>
#include <optional>
#include <string>
#include <vector>

#include "errors.hpp"
#include "pretrain/recipe.hpp"

namespace pretrain {

inline constexpr const char* kStateKey = "lora_pretrain";
inline constexpr int kStateVersion = 1;

/// What a checkpoint records besides tensors.
struct TrainingState {
  int64_t step = 0;                                    ///< optimizer steps done
  nlohmann::json recipe = nlohmann::json::object();    ///< flag -> value, as text
  nlohmann::json data = nlohmann::json::object();      ///< tokens, blocks, fingerprint, ...
  nlohmann::json cursor = nlohmann::json::object();    ///< the next sample: epoch, position
  nlohmann::json curve = nlohmann::json::object();     ///< {"steps": [...], "evals": [...]}
  double seconds = 0;                                  ///< training time so far
};

/// Writes `state`, the parameters and the optimizer to `path` atomically.
inline void save_checkpoint(const std::string& path, const AdamW& opt, const TrainingState& state) {
  torch::OrderedDict<std::string, torch::Tensor> tensors;
  nlohmann::json steps = nlohmann::json::object();
  for (const auto& slot : opt.slots()) {
    tensors.insert("model." + slot.name, slot.param.detach());
    tensors.insert("adamw." + slot.name + ".exp_avg", slot.exp_avg);
    tensors.insert("adamw." + slot.name + ".exp_avg_sq", slot.exp_avg_sq);
    steps[slot.name] = slot.steps;
  }
  nlohmann::json j = {{"version", kStateVersion}, {"step", state.step},   {"recipe", state.recipe},
                      {"data", state.data},       {"cursor", state.cursor}, {"adamw_steps", steps},
                      {"curve", state.curve},     {"seconds", state.seconds}};
  lora::safetensors::save(path, tensors, {{"format", "pt"}, {kStateKey, j.dump()}});
}

/// The JSON state of the checkpoint `file`; throws examples::FileError when it is not one.
inline nlohmann::json checkpoint_json(const lora::safetensors::File& file) {
  const auto it = file.metadata().find(kStateKey);
  if (it == file.metadata().end())
    throw examples::FileError(examples::str("'", file.path(), "' is a safetensors file but not a pretrain checkpoint (its "
                                            "metadata lacks \"", kStateKey, "\"). Remove it or give another --out."));
  try {
    auto j = nlohmann::json::parse(it->second);
    if (!j.is_object() || j.value("version", 0) != kStateVersion)
      throw examples::FileError(examples::str("pretrain checkpoint '", file.path(), "' has state version ",
                                              j.is_object() ? j.value("version", 0) : 0, "; this program reads version ",
                                              kStateVersion, ". Resume it with the program that wrote it, or give another --out."));
    return j;
  } catch (const nlohmann::json::exception& e) {
    throw examples::FileError(examples::str("pretrain checkpoint '", file.path(), "': its state is not valid JSON (",
                                            e.what(), "). The file is damaged: remove it to start over."));
  }
}

/// The state recorded in the checkpoint at `path`.
inline TrainingState read_state(const std::string& path) {
  const lora::safetensors::File file(path);
  const auto j = checkpoint_json(file);
  TrainingState s;
  s.step = j.at("step").get<int64_t>();
  s.recipe = j.at("recipe");
  s.data = j.at("data");
  s.cursor = j.at("cursor");
  s.curve = j.at("curve");
  s.seconds = j.value("seconds", 0.0);
  return s;
}

/// Copies the parameters and the optimizer state of the checkpoint at `path` into `opt` (and so
/// into the model its slots point at). Throws examples::FileError naming what does not fit.
inline void load_checkpoint(const std::string& path, AdamW& opt) {
  const lora::safetensors::File file(path);
  const auto j = checkpoint_json(file);
  const auto& steps = j.at("adamw_steps");
  torch::NoGradGuard no_grad;
  for (auto& slot : opt.slots()) {
    for (const auto& [key, target] : std::vector<std::pair<std::string, torch::Tensor*>>{
             {"model." + slot.name, &slot.param},
             {"adamw." + slot.name + ".exp_avg", &slot.exp_avg},
             {"adamw." + slot.name + ".exp_avg_sq", &slot.exp_avg_sq}}) {
      if (!file.contains(key))
        throw examples::FileError(examples::str("pretrain checkpoint '", path, "' lacks tensor '", key,
                                                "': it was written for another model. Give another --out."));
      const auto t = file.tensor(key);
      if (t.sizes() != target->sizes())
        throw examples::FileError(examples::str("pretrain checkpoint '", path, "': tensor '", key, "' has shape ",
                                                t.sizes(), " but the model's is ", target->sizes(),
                                                ". It was written for another model. Give another --out."));
      target->copy_(t);
    }
    slot.steps = steps.value(slot.name, int64_t{0});
  }
}

/// The recipe entries that differ between a checkpoint's `saved` and this run's `now`, as lines
/// "--flag: checkpoint X, this run Y".
inline std::vector<std::string> recipe_differences(const nlohmann::json& saved, const nlohmann::json& now) {
  std::vector<std::string> out;
  auto text = [](const nlohmann::json& j, const std::string& k) {
    if (!j.contains(k)) return std::string("(not set)");
    return j.at(k).is_string() ? j.at(k).get<std::string>() : j.at(k).dump();
  };
  std::set<std::string> keys;
  for (const auto& item : saved.items()) keys.insert(item.key());
  for (const auto& item : now.items()) keys.insert(item.key());
  for (const auto& k : keys)
    if (text(saved, k) != text(now, k)) out.push_back(k + ": checkpoint " + text(saved, k) + ", this run " + text(now, k));
  return out;
}

}  // namespace pretrain

// lora::peft::hot_swap(target, dir): loads a PEFT adapter folder into an existing adapter in
// place, as PEFT's hotswap_adapter. The target keeps its tensors: the file's A and B (and DoRA
// magnitude) are copied into the target's own A, B (and magnitude), whose storage does not change
// (same data_ptr), so an optimizer holding them, a traced or captured graph, or a reference kept
// elsewhere stays valid; each layer's scale becomes the file's (alpha / r, or alpha / sqrt(r)
// with use_rslora), also as the scale restore_scale() returns to, and layers() reports it.
//
// A target of larger rank is a maximum rank: a file of rank r <= R on a layer where the target
// has rank R fills the first r rows of A and the first r columns of B and zeroes the rest, so the
// layer computes exactly the file's adapter (the extra rank adds zero). Create the target with
// the largest rank you will swap in (e.g. inject() with that Config::rank) to swap files of any
// smaller ranks. The target's rank, alpha (in layers()), dropout and config() stay.
//
// Checked before anything changes (an error leaves the target as it was, still served):
//  - the target: not empty, not merged (unmerge first), no kept-trainable modules (a swap
//    replaces LoRA tensors only);
//  - the folder: the file adapts exactly the target's layers, at rank <= the target's on each
//    (TargetError, ShapeError), DoRA or not as the target (ConfigError), no modules_to_save and
//    no init that rewrites the base weights (PiSSA, OLoRA: ConfigError), and every check
//    peft::load() makes (shapes, floating dtypes, adapter_config.json against the tensors).
// It reuses peft::load(): the folder is loaded under a temporary adapter name onto the target's
// own layers (a module holding just those layers, shared, at their paths; with freeze_base off,
// so no requires_grad changes), compared with the target, copied, and the temporary adapter is
// removed, on every path (RAII). Unlike PEFT, a file that lacks some of the target's layers is
// refused (PEFT zeroes the target there); an attention's q / k / v slice adapters have no PEFT
// layout (peft::save writes them as one whole in_proj adapter), so a sliced target cannot be
// swapped from a folder.
//
// Threads: a swap (as a scale change, set_scale / scale_by / restore_scale) is not synchronised.
// It needs exclusive access to the model: no forward or backward pass may run on it, in any
// thread, while it runs. A pass running meanwhile may read a mix of old and new values (half-
// copied tensors, an old A with a new B, an old scale) and, on plain torch::nn layers, the
// temporary adapter the swap adds for a moment. Stop serving, swap, serve again; or serve from
// one model per thread.
#pragma once

#include <torch/nn/module.h>
#include <torch/types.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "detail/layers.hpp"
#include "detail/match.hpp"
#include "detail/peft_fields.hpp"
#include "detail/peft_layout.hpp"
#include "detail/peft_load_steps.hpp"
#include "error.hpp"
#include "layer_adapter.hpp"
#include "model_adapter.hpp"
#include "peft_config.hpp"
#include "peft_load.hpp"
#include "safetensors.hpp"

namespace lora::detail {

/// A module holding `layers`' modules (shared, not copied) at their paths, under empty modules
/// for the paths' other components: the layers as the model has them, nothing else of it. A
/// module inside another one placed (an attention's out_proj) comes with it.
inline std::shared_ptr<torch::nn::Module> module_of_layers(const std::vector<Layer>& layers) {
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> modules;
  for (const auto& l : layers) {
    bool listed = false;
    for (const auto& m : modules) listed |= m.first == l.module_path;
    if (!listed) modules.emplace_back(l.module_path, l.module);
  }
  const auto depth = [](const std::string& p) { return std::count(p.begin(), p.end(), '.'); };
  std::stable_sort(modules.begin(), modules.end(),
                   [&](const auto& a, const auto& b) { return depth(a.first) < depth(b.first); });
  auto root = std::make_shared<torch::nn::Module>();
  std::map<std::string, std::shared_ptr<torch::nn::Module>> nodes = {{"", root}};
  std::vector<std::string> placed;
  for (const auto& [path, module] : modules) {
    bool inside = false;
    for (const auto& p : placed) inside |= starts_with(path, p + ".");
    if (inside) continue;
    std::string parent;
    size_t from = 0;
    for (size_t dot = path.find('.'); dot != std::string::npos; from = dot + 1, dot = path.find('.', from)) {
      const auto name = path.substr(from, dot - from);
      const auto here = parent.empty() ? name : parent + "." + name;
      if (!nodes.count(here)) nodes[here] = nodes.at(parent)->register_module(name, std::make_shared<torch::nn::Module>());
      parent = here;
    }
    nodes.at(parent)->register_module(path.substr(from), module);
    placed.push_back(path);
  }
  return root;
}

}  // namespace lora::detail

namespace lora::peft {

/// Loads the PEFT adapter folder `dir` into `target` in place (see the top). options.mapping
/// says how the model's paths read in HF, as for load(); adapter_name, freeze_base and
/// autocast_adapter_dtype are not used (the target keeps its name, dtype and requires_grad).
/// On error the target is unchanged. Requires exclusive access to the model (see the top).
inline void hot_swap(ModelAdapter& target, const std::string& dir, const LoadOptions& options = {}) {
  using lora::detail::str;
  namespace fs = std::filesystem;
  const auto& layers = lora::detail::ModelAdapterAccess::layers(target);
  auto& infos = lora::detail::ModelAdapterAccess::infos(target);
  const auto& name = target.name();
  const std::string fn = "lora::peft::hot_swap";

  // The target.
  if (layers.empty())
    throw ConfigError(str(fn, ": adapter '", name, "' has no layer (an empty or removed handle). Swap into a handle ",
                          "that inject() or peft::load() returned."));
  std::vector<std::string> paths;
  for (const auto& l : infos) paths.push_back(l.path);
  for (const auto& l : layers)
    if (l.adapter(name).merged())
      throw ConfigError(str(fn, ": adapter '", name, "' is merged into layer '", l.path,
                            "'; a swap would leave the old values in the weight. unmerge() it first."));
  if (!target.kept_parameters().empty())
    throw ConfigError(str(fn, ": adapter '", name, "' keeps ", target.kept_parameters().size(),
                          " parameter(s) trainable (modules_to_save / Config::keep_trainable, e.g. '",
                          target.kept_parameters().front().first,
                          "'); a hot swap replaces LoRA tensors only and would leave those as they are. Load the "
                          "folder with peft::load instead."));

  // The folder's config.
  const auto config_path = (fs::path(dir) / kConfigFile).string();
  const auto weights_path = (fs::path(dir) / kWeightsFile).string();
  if (!fs::is_regular_file(weights_path))
    throw FileError(str(fn, ": PEFT adapter folder '", dir, "' lacks ", kWeightsFile, "."));
  const AdapterConfig pc = read_config(config_path);
  if (pc.modules_to_save && !pc.modules_to_save->empty())
    throw ConfigError(str(fn, ": PEFT adapter '", dir, "' has modules_to_save (",
                          lora::detail::quoted_list(*pc.modules_to_save),
                          "); a hot swap replaces LoRA tensors only. Load the folder with peft::load instead."));
  if (lora::detail::init_from_peft(pc.init_lora_weights, config_path).changes_base)
    throw ConfigError(str(fn, ": PEFT adapter '", dir, "' has init_lora_weights ", pc.init_lora_weights.dump(),
                          ", which rewrites the base weights when loaded (PiSSA / OLoRA keep the residual there); a "
                          "swap of adapter tensors cannot do that. Load it with peft::load into a fresh model."));
  if (pc.use_dora != target.dora())
    throw ConfigError(str(fn, ": PEFT adapter '", dir, "' has use_dora ", pc.use_dora ? "true" : "false",
                          " but adapter '", name, "' is ", target.dora() ? "" : "not ",
                          "a DoRA adapter; a swap keeps the target's variant. Swap a folder of the same kind."));

  // The folder's layers and ranks against the target's, from the file's header.
  const auto root = lora::detail::module_of_layers(layers);
  {
    const auto own = lora::detail::layers_of(*root);
    const auto index = lora::detail::peft_layer_index(own, options.mapping);
    const safetensors::File file(weights_path);
    const auto sorted = lora::detail::sort_tensors(file, {}, weights_path);
    std::map<std::string, size_t> target_at;
    for (size_t i = 0; i < infos.size(); ++i) target_at[infos[i].path] = i;
    std::set<size_t> covered;
    for (const auto& [hf, keys] : sorted.per_layer) {
      const auto it = index.by_hf.find(hf);
      const auto t = it == index.by_hf.end() ? target_at.end() : target_at.find(it->second->path);
      if (t == target_at.end())
        throw TargetError(str(fn, ": PEFT adapter '", dir, "' adapts layer '", hf, "', which adapter '", name,
                              "' does not carry (it adapts ", lora::detail::quoted_list(paths),
                              "). A hot swap replaces an adapter's values on the same layers: load the folder as a "
                              "new adapter with peft::load, or swap into an adapter on these layers."));
      covered.insert(t->second);
      const auto a_key = keys.of(layers[t->second].kind->names().a_holder);
      if (a_key.empty()) continue;  // load() says what is missing
      const auto& shape = file.info(a_key).shape;
      const int64_t r_file = shape.empty() ? 0 : shape[0], r = infos[t->second].rank;
      if (r_file > r)
        throw ShapeError(str(fn, ": PEFT adapter '", dir, "' has rank ", r_file, " on layer '", hf,
                             "', above the rank ", r, " of adapter '", name, "' there. The target's rank is the "
                             "largest it takes in place (smaller ranks are zero-padded): create the target with "
                             "rank >= ", r_file, " (the largest rank you will swap in), or load the folder with "
                             "peft::load."));
    }
    for (size_t i = 0; i < infos.size(); ++i)
      if (!covered.count(i)) {
        const auto& p = infos[i].path;
        const bool slice = !lora::detail::attention_of(p).empty() && !lora::detail::ends_with(p, ".in_proj");
        throw TargetError(str(fn, ": PEFT adapter '", dir, "' has no tensors for layer '", p, "' of adapter '", name,
                              "'; a hot swap needs a file for exactly the target's layers.",
                              slice ? " A q / k / v slice has no PEFT layout (peft::save writes an attention's "
                                      "slices as one whole in_proj adapter), so a sliced target cannot be swapped "
                                      "from a folder."
                                    : ""));
      }
  }

  // Load under a temporary name onto the same layers (every other check of load()), copy, and
  // remove the temporary adapter whatever happens.
  std::string temp;
  {
    const auto own = lora::detail::layers_of(*root);
    for (int i = 0;; ++i) {
      temp = "lora_hot_swap_" + std::to_string(i);
      bool used = false;
      for (const auto& l : own) used |= l.has_adapter(temp);
      if (!used) break;
    }
  }
  struct RemoveTemporary {
    torch::nn::Module& root;
    const std::string& name;
    ~RemoveTemporary() {
      try {
        for (const auto& l : lora::detail::layers_of(root))
          if (l.has_adapter(name)) l.remove(name);
      } catch (...) {
      }
    }
  };
  {
    RemoveTemporary cleanup{*root, temp};
    LoadOptions lo = options;
    lo.adapter_name = temp;
    lo.freeze_base = false;
    const ModelAdapter loaded = load(*root, dir, lo);
    const auto& from = lora::detail::ModelAdapterAccess::layers(loaded);
    std::vector<const LayerAdapter*> src(infos.size(), nullptr);
    for (const auto& l : from)
      for (size_t i = 0; i < infos.size(); ++i)
        if (infos[i].path == l.path) src[i] = &l.adapter(temp);
    for (size_t i = 0; i < infos.size(); ++i)  // checked above from the header; kept as a guard
      if (!src[i] || from.size() != infos.size() || src[i]->rank > infos[i].rank)
        throw TargetError(str(fn, ": PEFT adapter '", dir, "' does not fit adapter '", name, "' on layer '",
                              infos[i].path, "'."));
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < infos.size(); ++i) {
        const auto& dst = layers[i].adapter(name);
        for (const auto& t : dst.variant().tensors(dst.kind())) {
          auto d = dst.*t.member;
          const auto& s = src[i]->*t.member;
          if (t.member == &LayerAdapter::A || t.member == &LayerAdapter::B) {
            // As matrices: A (R, in_m) takes the file's r rows, B (out_m, R) its r columns; zeros after.
            const bool a = t.member == &LayerAdapter::A;
            auto m = torch::zeros({d.size(0), d.numel() / d.size(0)}, d.options().requires_grad(false));
            const auto sm = s.reshape({s.size(0), -1});
            (a ? m.narrow(0, 0, sm.size(0)) : m.narrow(1, 0, sm.size(1))).copy_(sm);
            d.copy_(m.view(d.sizes()));
          } else {
            d.copy_(s);  // a variant's own tensor (DoRA's magnitude), shaped by the layer, not the rank
          }
        }
      }
    }
    for (size_t i = 0; i < infos.size(); ++i) {
      layers[i].set_scale(name, src[i]->scale, /*configured=*/true);
      infos[i].scale = src[i]->scale;
    }
  }
  target.sync();
}

}  // namespace lora::peft

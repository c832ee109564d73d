// How an adapter's layers read in a PEFT folder: each one's module path and tensors in
// adapter_model.safetensors, and its rank and alpha in adapter_config.json (the lora_alpha that
// gives it its scale, rank_pattern / alpha_pattern entries).
// Most layers map one to one ("base_model.model.<HF path>.lora_A.weight", Embedding's
// ".lora_embedding_A"). A torch::nn::MultiheadAttention is PEFT's one exception:
//  - PEFT adapts its in_proj under the attention's own path ("<attention>.lora_A.weight",
//    A (r, E), B (3E, r)) and always its out_proj too, which then sits under
//    "<attention>.base_layer.out_proj";
//  - this library's q / k / v slices have no PEFT layout: they are written as one in_proj
//    adapter that computes exactly the same delta, A = [A_q; A_k; A_v] (r_q + r_k + r_v, E) and
//    B with each slice's s B_part in its own rows and columns (zero elsewhere), at scale 1
//    (lora_alpha = r for alpha / r, sqrt(r) for rsLoRA). Loading it gives one whole-in_proj
//    adapter with the same output;
//  - an in_proj adapter without its out_proj gets an out_proj adapter of rank 1 that is exactly
//    zero, since PEFT cannot adapt one without the other.
#pragma once

#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../model_adapter.hpp"
#include "../error.hpp"
#include "../peft_config.hpp"
#include "match.hpp"
#include "variant_registry.hpp"

namespace lora::detail {

/// One layer as PEFT sees it.
struct PeftLayer {
  std::string hf_path;   ///< the module path in PEFT's keys (without "base_model.model.")
  std::string target;    ///< what target_modules must name to select it ("" : selected with another)
  int64_t rank = 0;
  double scale = 0;      ///< s of the tensors below
  double alpha = 0;      ///< the configured alpha (the exported one follows from rank and scale)
  bool conv1d = false;   ///< transformers' Conv1D in HF (fan_in_fan_out)
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  ///< key ("lora_A.weight", ...) -> tensor
};

/// The attention path of an in_proj layer path ("<attention>.in_proj[.q|.k|.v]"), or "".
inline std::string attention_of(const std::string& path) {
  for (const char* part : {".in_proj", ".in_proj.q", ".in_proj.k", ".in_proj.v"}) {
    const std::string p = part;
    if (path.size() > p.size() && path.compare(path.size() - p.size(), p.size(), p) == 0)
      return path.substr(0, path.size() - p.size());
  }
  return "";
}

/// `adapters` as PEFT lays it out (see the top). `rslora`: the file's scaling rule.
inline std::vector<PeftLayer> peft_layers(const ModelAdapter& adapters, const peft::HfMapping& mapping, bool rslora) {
  const auto state = adapters.state_dict();
  const auto& infos = adapters.layers();
  std::vector<PeftLayer> out;
  // Attentions whose in_proj (whole or sliced) is adapted, and their parts.
  std::map<std::string, std::vector<const LayerInfo*>> in_proj;
  std::vector<std::string> order;
  for (const auto& l : infos) {
    const auto attention = attention_of(l.path);
    if (attention.empty()) continue;
    if (!in_proj.count(attention)) order.push_back(attention);
    in_proj[attention].push_back(&l);
  }
  const auto tensor = [&](const std::string& key) {
    const auto* t = state.find(key);
    if (!t) throw Error(lora::detail::str("lora::peft::save: the adapter has no tensor '", key, "'."));
    return *t;
  };
  for (const auto& l : infos) {
    const auto attention = attention_of(l.path);
    if (!attention.empty()) {
      if (in_proj.at(attention).front() != &l) continue;  // written once, at its first part
      const auto& parts = in_proj.at(attention);
      PeftLayer p;
      p.hf_path = p.target = mapping.hf_path(attention);
      if (parts.size() == 1 && parts.front()->path == attention + ".in_proj") {  // PEFT's own layout
        p.rank = l.rank;
        p.scale = l.scale;
        p.alpha = l.alpha;
        p.tensors = {{"lora_A.weight", tensor(l.path + ".lora_A.weight")}, {"lora_B.weight", tensor(l.path + ".lora_B.weight")}};
      } else {  // slices (and maybe the whole): one exact in_proj adapter at scale 1
        std::vector<torch::Tensor> As;
        int64_t r = 0;
        for (const auto* part : parts) r += part->rank;
        const auto A0 = tensor(parts.front()->path + ".lora_A.weight");
        const int64_t E = A0.size(1);
        auto B = torch::zeros({3 * E, r}, A0.options());
        int64_t col = 0;
        for (const auto* part : parts) {
          const auto A = tensor(part->path + ".lora_A.weight"), Bp = tensor(part->path + ".lora_B.weight");
          const auto suffix = part->path.substr(attention.size());  // ".in_proj", ".in_proj.q", ...
          const int64_t row = suffix == ".in_proj.q" ? 0 : suffix == ".in_proj.k" ? E : suffix == ".in_proj.v" ? 2 * E : 0;
          B.narrow(0, row, Bp.size(0)).narrow(1, col, part->rank).copy_(Bp * part->scale);
          As.push_back(A);
          col += part->rank;
        }
        p.rank = r;
        p.scale = 1;
        p.alpha = rslora ? std::sqrt(static_cast<double>(r)) : static_cast<double>(r);
        p.tensors = {{"lora_A.weight", torch::cat(As, 0)}, {"lora_B.weight", B}};
      }
      out.push_back(std::move(p));
      continue;
    }
    const auto slash = l.path.rfind(".out_proj");
    const bool out_proj = slash != std::string::npos && slash + 9 == l.path.size() && in_proj.count(l.path.substr(0, slash));
    PeftLayer p;
    p.hf_path = out_proj ? mapping.hf_path(l.path.substr(0, slash)) + ".base_layer.out_proj" : mapping.hf_path(l.path);
    p.target = out_proj ? "" : p.hf_path;
    p.rank = l.rank;
    p.scale = l.scale;
    p.alpha = l.alpha;
    p.conv1d = mapping.is_conv1d(l.path);
    for (const auto& t : lora::detail::all_adapter_tensors())
      if (const auto* found = state.find(l.path + "." + t.key)) p.tensors.emplace_back(t.key, *found);
    out.push_back(std::move(p));
  }
  // An adapted in_proj without its out_proj: PEFT adapts both, so add a zero out_proj adapter.
  for (const auto& attention : order) {
    const auto hf = mapping.hf_path(attention) + ".base_layer.out_proj";
    bool present = false;
    for (const auto& p : out) present |= p.hf_path == hf;
    if (present) continue;
    const auto E = tensor(in_proj.at(attention).front()->path + ".lora_A.weight").size(1);
    const auto opts = tensor(in_proj.at(attention).front()->path + ".lora_A.weight").options();
    PeftLayer p;
    p.hf_path = hf;
    p.rank = 1;
    p.scale = 1;
    p.alpha = 1;
    p.tensors = {{"lora_A.weight", torch::zeros({1, E}, opts)}, {"lora_B.weight", torch::zeros({E, 1}, opts)}};
    out.push_back(std::move(p));
  }
  return out;
}

// What adapter_config.json says of the layers: the lora_alpha that gives each its scale, and
// the rank_pattern / alpha_pattern entries.

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
                          const std::map<std::string, double>* alpha_hint, peft::AdapterConfig& c) {
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

}  // namespace lora::detail

// lora::ModelAdapter: one named adapter on every layer it adapts, the handle inject() and
// peft::load() return (lora::Adapters until 0.1: a deprecated alias, kept for one release). It
// names what was adapted, gives the parameters to optimise, and merges, disables, saves and
// loads the adapter. (One adapter on one layer is a LayerAdapter, layer_adapter.hpp.)
#pragma once

#include <torch/optim/optimizer.h>
#include <torch/ordered_dict.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "config.hpp"
#include "detail/layers.hpp"
#include "detail/variant.hpp"
#include "error.hpp"

namespace lora {

/// How a layer carries its adapter.
enum class LayerKind {
  drop_in,         ///< a layer of the library's (lora::Linear, lora::Embedding, lora::Conv2d, ...): the
                   ///< fast path, the adapter runs inside forward()
  reparametrized,  ///< a plain torch::nn layer: the compatibility path (its weight is re-parametrized)
  lora_linear [[deprecated("use LayerKind::drop_in")]] = drop_in,
  torch_linear [[deprecated("use LayerKind::reparametrized")]] = reparametrized,
};

/// One adapted layer, as inject() reports it.
struct LayerInfo {
  std::string path;  ///< module path in the model, e.g. "transformer.layer.0.attention.q_lin"
  int64_t in_features = 0;   ///< of the layer's weight seen as a matrix (detail/kind.hpp): Linear in
  int64_t out_features = 0;  ///< Linear out; Embedding: dim x num; Conv: out x (in * k...)
  int64_t rank = 0;
  double alpha = 0;
  double scale = 0;
  LayerKind kind = LayerKind::drop_in;
  std::string type = "Linear";  ///< the layer kind: "Linear", "Embedding", "Conv2d", "MultiheadAttention.in_proj.q", ...
};

namespace detail {
struct ModelAdapterAccess;
}  // namespace detail

/// The handle of one named adapter on a model, as inject() and peft::load() return it.
class ModelAdapter {
 public:
  /// An empty handle (no layers); inject() and peft::load() return real ones.
  ModelAdapter() = default;

  /// The adapter's name (Config::adapter_name).
  const std::string& name() const { return name_; }
  /// The Config inject() was given (what lora::peft::save writes to adapter_config.json).
  const Config& config() const { return config_; }
  /// Whether the adapter is a DoRA adapter (Config::use_dora).
  bool dora() const {
    for (const auto& l : layers_)
      if (adapter(l).dora()) return true;
    return false;
  }
  /// The adapted layers, in model order.
  const std::vector<LayerInfo>& layers() const { return infos_; }

  /// What to give the optimizer: every A and B (and DoRA magnitude) of this adapter, then the
  /// parameters kept trainable (Config::keep_trainable).
  std::vector<torch::Tensor> parameters() const {
    std::vector<torch::Tensor> out;
    for (const auto& kv : named_parameters()) out.push_back(kv.second);
    return out;
  }
  /// The same, named by their paths in the model ("<path>.lora_A.<name>.weight", ...,
  /// "<path>.lora_magnitude_vector.<name>.weight" for DoRA).
  std::vector<std::pair<std::string, torch::Tensor>> named_parameters() const {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const auto& a = adapter(layers_[i]);
      for (const auto& t : a.variant().tensors(a.kind()))
        out.emplace_back(infos_[i].path + "." + t.holder + "." + name_ + ".weight", a.*t.member);
    }
    out.insert(out.end(), kept_.begin(), kept_.end());
    return out;
  }
  /// Only the A tensors / only the B tensors (LoRA+ gives B a larger learning rate).
  std::vector<torch::Tensor> a_parameters() const { return select(true); }
  std::vector<torch::Tensor> b_parameters() const { return select(false); }
  /// DoRA's magnitude vectors (empty without DoRA).
  std::vector<torch::Tensor> magnitude_parameters() const {
    std::vector<torch::Tensor> out;
    for (const auto& l : layers_)
      if (adapter(l).dora()) out.push_back(adapter(l).magnitude);
    return out;
  }
  /// The parameters kept trainable, by path.
  const std::vector<std::pair<std::string, torch::Tensor>>& kept_parameters() const { return kept_; }

  /// Number of trainable values: adapters plus kept modules.
  int64_t trainable_parameter_count() const {
    int64_t n = 0;
    for (const auto& kv : named_parameters()) n += kv.second.numel();
    return n;
  }
  /// Number of values in the model's parameters at injection time (base + adapters).
  int64_t model_parameter_count() const { return model_parameters_; }

  /// One line per layer and a total, for logs.
  std::string summary() const {
    std::ostringstream s;
    int64_t fast = 0;
    for (const auto& l : infos_) fast += l.kind == LayerKind::drop_in;
    s << "lora: adapter '" << name_ << "' on " << infos_.size() << " layers (" << fast << " drop-in, "
      << infos_.size() - fast << " plain torch::nn, re-parametrized); trainable " << trainable_parameter_count()
      << " of " << model_parameters_ << " parameters\n";
    for (size_t i = 0; i < infos_.size(); ++i) {
      const auto& l = infos_[i];
      const std::string variant = adapter(layers_[i]).variant().name();
      s << "  " << l.path << "  " << (l.kind == LayerKind::drop_in ? "lora::" : "torch::nn::") << l.type << " ("
        << l.out_features << " x " << l.in_features << ")  r=" << l.rank << " alpha=" << l.alpha
        << " scale=" << l.scale << (variant.empty() ? "" : " " + variant)
        << (l.kind == LayerKind::reparametrized ? "  [re-parametrized]" : "") << "\n";
    }
    return s.str();
  }

  /// Adds s * B A into each base weight; forward() then costs what the base costs.
  void merge() const { for (const auto& l : layers_) l.merge(name_); }
  /// Takes the adapter back out of each base weight (within float rounding).
  void unmerge() const { for (const auto& l : layers_) l.unmerge(name_); }
  /// disable(): every adapted layer computes exactly its base output (merged adapters are
  /// unmerged first); enable() turns adapters back on.
  void enable() const { for (const auto& l : layers_) l.set_enabled(true); }
  void disable() const { for (const auto& l : layers_) l.set_enabled(false); }
  /// The adapter's scale at run time (PEFT's set_scale, scale_layer and unscale_layer), without
  /// recreating it: set_scale(s) gives every layer the scale s; scale_by(f) gives each layer f
  /// times the scale it was created with (its LayerAdapter::configured_scale(): alpha / r, ...);
  /// restore_scale() brings those back. Plain torch::nn layers recompute their weight. scale_by(0)
  /// gives exactly the base output. layers() reports the new scales, and peft::save writes them
  /// (the file's lora_alpha is the one that gives PEFT the current s), so a saved and reloaded
  /// adapter computes what this one computes now. Refused (ConfigError, nothing changed) while
  /// the adapter is merged. Not synchronised: no forward pass may run on the model meanwhile.
  void set_scale(double s) { rescale([&](const LayerAdapter&) { return s; }); }
  void scale_by(double factor) { rescale([&](const LayerAdapter& a) { return factor * a.configured_scale(); }); }
  void restore_scale() { rescale([](const LayerAdapter& a) { return a.configured_scale(); }); }

  /// Makes this adapter the only active one on its layers.
  void activate() const { for (const auto& l : layers_) l.set_active({name_}); }
  /// Removes this adapter from the model; the handle is empty afterwards.
  void remove() {
    for (const auto& l : layers_) l.remove(name_);
    layers_.clear();
    infos_.clear();
    kept_.clear();
  }

  /// Recomputes the effective weights of torch::nn::Linear layers (compatibility path) from
  /// the current A and B. Needed after changing A or B by hand; step() and load_state_dict()
  /// call it for you. A no-op for lora::Linear layers.
  void sync() const { for (const auto& l : layers_) l.sync(); }

  /// optimizer.step(), then sync(): the one call a training loop needs on either path.
  template <typename Optimizer>
  void step(Optimizer& optimizer) const {
    optimizer.step();
    sync();
  }

  /// The adapter as named tensors "<path>.lora_A.weight" (r, in) and "<path>.lora_B.weight"
  /// (out, r), and for DoRA "<path>.lora_magnitude_vector" (out): PEFT's on-disk names without
  /// the "base_model.model." prefix.
  torch::OrderedDict<std::string, torch::Tensor> state_dict() const {
    torch::OrderedDict<std::string, torch::Tensor> out;
    for (size_t i = 0; i < layers_.size(); ++i)
      for (const auto& [key, t] : tensor_keys(i)) out.insert(key, t.detach());
    return out;
  }

  /// Copies tensors named as state_dict() names them into this adapter. Every key and shape
  /// is checked before anything is copied: on error nothing has changed. With strict, keys
  /// this adapter lacks, and keys of this adapter missing from `state`, are errors.
  void load_state_dict(const torch::OrderedDict<std::string, torch::Tensor>& state, bool strict = true) const {
    std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;
    std::vector<std::string> missing;
    size_t used = 0;
    for (size_t i = 0; i < layers_.size(); ++i) {
      for (const auto& [key, dst] : tensor_keys(i)) {
        const auto* src = state.find(key);
        if (!src) {
          missing.push_back(key);
          continue;
        }
        ++used;
        if (src->sizes() != dst.sizes())
          throw ShapeError(detail::str("lora: adapter tensor '", key, "' has shape ", src->sizes(),
                                       " but the model's has shape ", dst.sizes(),
                                       ". The adapter was trained with another rank or on another model."));
        copies.emplace_back(dst, *src);
      }
    }
    if (strict && !missing.empty())
      throw ShapeError(detail::str("lora: the state lacks ", missing.size(), " adapter tensor(s), e.g. '",
                                   missing.front(), "'. Pass strict = false to load a subset."));
    if (strict && used != state.size()) {
      std::vector<std::string> unexpected;
      std::set<std::string> known;
      for (size_t i = 0; i < layers_.size(); ++i)
        for (const auto& kv : tensor_keys(i)) known.insert(kv.first);
      for (const auto& item : state)
        if (!known.count(item.key())) unexpected.push_back(item.key());
      throw ShapeError(detail::str("lora: the state has ", unexpected.size(), " tensor(s) that match no adapted layer, e.g. '",
                                   unexpected.front(), "'. Check the target layers, or pass strict = false."));
    }
    torch::NoGradGuard no_grad;
    for (auto& [dst, src] : copies) dst.copy_(src);
    sync();
  }

 private:
  friend struct detail::ModelAdapterAccess;
  template <typename F>
  void rescale(F scale_of) {
    std::vector<double> s;
    for (const auto& l : layers_) {
      const auto& a = adapter(l);
      s.push_back(scale_of(a));
      if (!std::isfinite(s.back()))
        throw ConfigError(detail::str("lora: adapter '", name_, "': scale ", s.back(), " for layer '", l.path,
                                      "' is not finite."));
      if (a.merged())
        throw ConfigError(detail::str("lora: adapter '", name_, "' is merged into layer '", l.path,
                                      "', and its scale with it; unmerge() it before changing the scale."));
    }
    for (size_t i = 0; i < layers_.size(); ++i) {
      layers_[i].set_scale(name_, s[i]);
      infos_[i].scale = s[i];
    }
  }

  /// What inject() builds: `layers` carry adapter `name`, `infos` describe them (same order).
  ModelAdapter(std::string name, std::vector<detail::Layer> layers, std::vector<LayerInfo> infos,
               std::vector<std::pair<std::string, torch::Tensor>> kept, int64_t model_parameters, Config config)
      : name_(std::move(name)),
        layers_(std::move(layers)),
        infos_(std::move(infos)),
        kept_(std::move(kept)),
        model_parameters_(model_parameters),
        config_(std::move(config)) {}

  const LayerAdapter& adapter(const detail::Layer& l) const { return l.adapter(name_); }
  /// The state_dict() keys of layer i with the tensors they name.
  std::vector<std::pair<std::string, torch::Tensor>> tensor_keys(size_t i) const {
    const auto& a = adapter(layers_[i]);
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (const auto& t : a.variant().tensors(a.kind())) out.emplace_back(infos_[i].path + "." + t.key, a.*t.member);
    return out;
  }
  std::vector<torch::Tensor> select(bool a_side) const {
    std::vector<torch::Tensor> out;
    for (const auto& l : layers_) out.push_back(a_side ? adapter(l).A : adapter(l).B);
    return out;
  }

  std::string name_;
  std::vector<detail::Layer> layers_;
  std::vector<LayerInfo> infos_;
  std::vector<std::pair<std::string, torch::Tensor>> kept_;
  int64_t model_parameters_ = 0;
  Config config_;
};

namespace detail {
/// Builds ModelAdapter handles (its constructor is private: only inject() makes them), and
/// gives the library's own functions that change one in place (peft::hot_swap) its layers.
struct ModelAdapterAccess {
  template <typename... Args>
  static ModelAdapter make(Args&&... args) {
    return ModelAdapter(std::forward<Args>(args)...);
  }
  static const std::vector<Layer>& layers(const ModelAdapter& m) { return m.layers_; }
  static std::vector<LayerInfo>& infos(ModelAdapter& m) { return m.infos_; }
};
}  // namespace detail

using Adapters [[deprecated("renamed lora::ModelAdapter (one adapter on every layer it adapts)")]] = ModelAdapter;

}  // namespace lora

// The LoRA variants the library knows (detail/variant.hpp), and which one an adapter gets
// (PEFT's resolve_lora_variant). A new variant is one file beside dora.hpp, its option in
// Config, LayerAdapterSpec and peft_config.hpp, and its lines below (an instance, an entry in
// variants(), its case in variant_for()).
#pragma once

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "../kinds/embedding.hpp"
#include "../kinds/linear.hpp"
#include "dora.hpp"
#include "variant.hpp"

namespace lora::detail {

/// The one instance of each variant.
inline const Variant& plain_lora() {
  static const PlainLora v{};
  return v;
}
inline const Variant& dora() {
  static const Dora v{};
  return v;
}

/// Every variant, plain LoRA first.
inline const std::vector<const Variant*>& variants() {
  static const std::vector<const Variant*> all = {&plain_lora(), &dora()};
  return all;
}

/// The variant the options select (LayerAdapterSpec::use_dora, set from Config::use_dora or PEFT's
/// use_dora): DoRA, else plain LoRA.
inline const Variant& variant_for(bool use_dora) { return use_dora ? dora() : plain_lora(); }

/// Every tensor some variant gives an adapter on some kind of layer, each holder once (A and B
/// as lora_A / lora_B and as lora_embedding_A / lora_embedding_B, then the variants' own): for
/// the code that names adapter tensors without an adapter at hand.
inline std::vector<AdapterTensor> all_adapter_tensors() {
  std::vector<AdapterTensor> out;
  for (const auto& n : {kinds::Linear().names(), kinds::Embedding().names()}) {
    out.push_back({n.a_holder, n.a_key, &LayerAdapter::A});
    out.push_back({n.b_holder, n.b_key, &LayerAdapter::B});
  }
  for (const Variant* v : variants())
    for (const auto& t : v->extra_tensors())
      if (std::none_of(out.begin(), out.end(), [&](const AdapterTensor& o) { return std::strcmp(o.holder, t.holder) == 0; }))
        out.push_back(t);
  return out;
}

/// The variant whose adapters have a tensor under `holder` besides A and B (nullptr if none).
inline const Variant* variant_with(const std::string& holder) {
  for (const Variant* v : variants())
    for (const auto& t : v->extra_tensors())
      if (holder == t.holder) return v;
  return nullptr;
}

}  // namespace lora::detail

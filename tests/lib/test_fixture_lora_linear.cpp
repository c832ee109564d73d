// ../shared/fixtures/lora_linear_tiny: an independent reference's LoRA layers (Linear, GPT-2
// Conv1D layout, rsLoRA, training-mode dropout with a given mask). Every case must match
// within the fixture's tolerance: output, delta_weight and merged_weight.
#include <lora/lora.hpp>
#include <lora/safetensors.hpp>

#include <nlohmann/json.hpp>

#include "support.hpp"

TEST_CASE("lora_linear_tiny: every reference case matches", "[fixture][linear]") {
  const auto dir = lora_test::fixture("lora_linear_tiny");
  LORA_REQUIRE_PATH(dir / "expected.json");
  const auto expected = nlohmann::json::parse(lora_test::read_text(dir / "expected.json"));
  const auto tensors = lora::safetensors::load((dir / "tensors.safetensors").string());
  const double atol = expected["tolerance"]["atol"], rtol = expected["tolerance"]["rtol"];
  REQUIRE(expected["cases"].size() == 4);

  for (const auto& c : expected["cases"]) {
    const std::string name = c["name"];
    INFO("case " << name);
    const auto& t = c["tensors"];
    auto get = [&](const char* field) { return tensors[t[field].get<std::string>()]; };
    const bool fan_in_fan_out = c["fan_in_fan_out"];
    auto W = get("weight");
    if (fan_in_fan_out) W = W.t().contiguous();  // Conv1D stores [in, out]: lora::Linear wants [out, in]
    const int64_t r = c["r"];
    const double alpha = c["lora_alpha"];
    const auto scaling = c["use_rslora"].get<bool>() ? lora::scaling::alpha_over_sqrt_rank() : lora::scaling::alpha_over_rank();
    const double s = scaling.scale(alpha, r);
    CHECK(s == Approx(c["scaling"].get<double>()));

    lora::Linear layer(W.size(1), W.size(0));
    lora::LayerAdapterSpec spec;
    spec.rank = r;
    spec.alpha = alpha;
    spec.scaling = scaling;
    REQUIRE(spec.scale() == s);
    spec.dropout = c["lora_dropout"];
    auto& a = layer->add_adapter("default", spec);
    {
      torch::NoGradGuard g;
      layer->weight.copy_(W);
      layer->bias.copy_(get("bias"));
      a.A.copy_(get("lora_A.weight"));  // A (r, in), B (out, r) in both layouts
      a.B.copy_(get("lora_B.weight"));
    }
    auto x = get("x");
    torch::Tensor y;
    if (t.contains("dropout_mask")) {
      layer->train();
      auto base = torch::nn::functional::linear(x, layer->weight, layer->bias);
      y = lora::functional::add_lora(base, x, a.A, a.B, a.scale, a.dropout, /*training=*/true, get("dropout_mask"));
    } else {
      layer->eval();
      y = layer(x);
    }
    CHECK(lora_test::allclose(y, lora_test::json_tensor(c["output"]), rtol, atol, name + " output"));

    auto delta = a.delta_weight();
    if (fan_in_fan_out) delta = delta.t();  // the reference reports it in the layer's own layout
    CHECK(lora_test::allclose(delta, lora_test::json_tensor(c["delta_weight"]), rtol, atol, name + " delta_weight"));
    layer->merge();
    auto merged = fan_in_fan_out ? layer->weight.t() : layer->weight;
    CHECK(lora_test::allclose(merged, lora_test::json_tensor(c["merged_weight"]), rtol, atol, name + " merged_weight"));
    if (!t.contains("dropout_mask"))  // merged output equals the adapter's output
      CHECK(lora_test::allclose(layer(x), lora_test::json_tensor(c["output"]), rtol, atol, name + " merged output"));
  }
}

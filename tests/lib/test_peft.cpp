// PEFT interoperability (lora::peft), LoRA+ (lora/loraplus.hpp), DoRA and several adapters on
// one model, on a small model of lora::Linear layers.
#include <lora/lora.hpp>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "support.hpp"
#include "reference.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using lora_test::contains;
using lora_test::error_of;
using lora_test::temp_dir;

/// Two blocks of q_lin / k_lin / v_lin, a LayerNorm and a head, named like a transformer.
class NetImpl : public torch::nn::Module {
 public:
  NetImpl() {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int i = 0; i < 2; ++i) {
      auto block = std::make_shared<torch::nn::Module>();
      block->register_module("q_lin", lora::Linear(16, 16));
      block->register_module("k_lin", lora::Linear(16, 16));
      block->register_module("v_lin", lora::Linear(16, 16));
      layer->push_back(block);
    }
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({16})));
    head = register_module("head", lora::Linear(16, 4));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (const auto& block : *layer) {
      auto c = block->named_children();
      auto q = std::dynamic_pointer_cast<lora::LinearImpl>(c["q_lin"]);
      auto k = std::dynamic_pointer_cast<lora::LinearImpl>(c["k_lin"]);
      auto v = std::dynamic_pointer_cast<lora::LinearImpl>(c["v_lin"]);
      x = torch::tanh(q->forward(x) + k->forward(x) * v->forward(x));
    }
    return head(norm(x));
  }
  torch::nn::ModuleList layer{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  lora::Linear head{nullptr};
};
TORCH_MODULE(Net);

/// A model with the same base weights as `src` (and no adapter).
Net copy_of(Net& src) {
  Net n;
  torch::NoGradGuard g;
  auto dst = n->named_parameters();
  for (const auto& p : src->named_parameters())
    if (p.key().find("lora_") == std::string::npos) dst[p.key()].copy_(p.value());
  return n;
}

lora::Config config() {
  lora::Config c;
  c.targets = {"q_lin", "v_lin", "head"};
  c.rank = 4;
  c.alpha = 8;
  c.rank_pattern = {{"head", 2}};
  c.alpha_pattern = {{"v_lin", 4}};
  c.keep_trainable = {"norm"};
  c.dropout = 0.05;
  return c;
}

/// Random B (and magnitude), so the adapter changes the output.
void randomize(const lora::ModelAdapter& a, uint64_t seed = 5) {
  torch::manual_seed(seed);
  torch::NoGradGuard g;
  for (auto& b : a.b_parameters()) b.normal_(0, 0.3);
  for (auto& m : a.magnitude_parameters()) m.mul_(1 + 0.2 * torch::randn_like(m));
  for (const auto& kv : a.kept_parameters()) kv.second.add_(0.1 * torch::randn_like(kv.second));
}

void write_json(const fs::path& p, const json& j) { std::ofstream(p, std::ios::binary) << j.dump(2); }

/// Every parameter of the model by name, cloned.
std::map<std::string, torch::Tensor> snapshot(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : m.named_parameters()) out[p.key()] = p.value().detach().clone();
  return out;
}
bool same(const std::map<std::string, torch::Tensor>& a, const std::map<std::string, torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, v] : a)
    if (!b.count(k) || !torch::equal(v, b.at(k))) return false;
  return true;
}

/// A saved adapter folder for a fresh Net (returned with its model and inputs).
struct Saved {
  Net net;
  fs::path dir;
  torch::Tensor x, y;
};
Saved saved_adapter(const std::string& tag, lora::Config cfg = config(), lora::peft::SaveOptions opts = {}) {
  torch::manual_seed(1);
  Saved s;
  auto a = lora::inject(*s.net, cfg);
  randomize(a);
  s.net->eval();
  s.x = torch::randn({5, 16});
  s.y = s.net->forward(s.x).detach();
  s.dir = temp_dir(tag);
  lora::peft::save(a, s.dir.string(), opts);
  return s;
}


}  // namespace

TEST_CASE("peft: save then load into a fresh model gives the same outputs", "[peft]") {
  auto s = saved_adapter("roundtrip");
  Net fresh = copy_of(s.net);
  fresh->eval();
  const auto before = fresh->forward(s.x).detach();
  CHECK_FALSE(torch::allclose(before, s.y));
  auto a = lora::peft::load(*fresh, s.dir.string());
  REQUIRE(lora_test::allclose(fresh->forward(s.x), s.y, 0, 0, "reloaded vs saved"));
  CHECK(a.name() == "default");
  REQUIRE(a.layers().size() == 5);
  for (const auto& l : a.layers()) {
    INFO(l.path);
    const bool head = l.path == "head", v = l.path.find("v_lin") != std::string::npos;
    CHECK(l.rank == (head ? 2 : 4));
    CHECK(l.alpha == (v ? 4.0 : 8.0));
    CHECK(l.scale == Approx((v ? 4.0 : 8.0) / l.rank));
  }
  // The kept-trainable LayerNorm came back, trainable; the base is frozen.
  CHECK(fresh->norm->weight.requires_grad());
  CHECK_FALSE(fresh->layer[0]->named_parameters()["q_lin.weight"].requires_grad());
  // Saving the loaded adapter again gives the same tensors.
  const auto again = temp_dir("roundtrip2");
  lora::peft::save(a, again.string());
  const auto t1 = lora::safetensors::load((s.dir / "adapter_model.safetensors").string());
  const auto t2 = lora::safetensors::load((again / "adapter_model.safetensors").string());
  REQUIRE(t1.size() == t2.size());
  for (const auto& item : t1) CHECK(torch::equal(item.value(), t2[item.key()]));
  fs::remove_all(s.dir);
  fs::remove_all(again);
}

TEST_CASE("peft: adapter_config.json and adapter_model.safetensors in PEFT's layout", "[peft]") {
  lora::peft::SaveOptions opts;
  opts.base_model_name_or_path = "tiny-net";
  auto s = saved_adapter("layout", config(), opts);
  const auto c = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
  CHECK(c["peft_type"] == "LORA");
  CHECK(c["r"] == 4);
  CHECK(c["lora_alpha"] == 8);
  CHECK(c["lora_alpha"].is_number_integer());
  CHECK(c["lora_dropout"].get<double>() == Approx(0.05));
  CHECK(c["target_modules"] == json::array({"q_lin", "v_lin", "head"}));
  CHECK(c["bias"] == "none");
  CHECK(c["use_rslora"] == false);
  CHECK(c["use_dora"] == false);
  CHECK(c["fan_in_fan_out"] == false);
  CHECK(c["modules_to_save"] == json::array({"norm"}));
  CHECK(c["base_model_name_or_path"] == "tiny-net");
  CHECK(c["task_type"].is_null());
  CHECK(c["init_lora_weights"] == true);
  CHECK(c["rank_pattern"] == json({{"head", 2}}));
  CHECK(c["alpha_pattern"] == json({{"v_lin", 4}}));
  // Keys sorted, as PEFT writes them.
  std::string prev;
  for (const auto& [k, v] : c.items()) {
    CHECK(prev < k);
    prev = k;
  }

  const lora::safetensors::File f((s.dir / "adapter_model.safetensors").string());
  CHECK(f.metadata() == std::map<std::string, std::string>{{"format", "pt"}});
  CHECK(f.tensors().size() == 5 * 2 + 2);
  CHECK(f.info("base_model.model.layer.0.q_lin.lora_A.weight").shape == std::vector<int64_t>{4, 16});
  CHECK(f.info("base_model.model.layer.0.q_lin.lora_B.weight").shape == std::vector<int64_t>{16, 4});
  CHECK(f.info("base_model.model.head.lora_A.weight").shape == std::vector<int64_t>{2, 16});
  CHECK(f.info("base_model.model.head.lora_B.weight").shape == std::vector<int64_t>{4, 2});
  CHECK(f.contains("base_model.model.norm.weight"));
  CHECK(f.contains("base_model.model.norm.bias"));
  CHECK_FALSE(f.contains("base_model.model.layer.0.k_lin.lora_A.weight"));
  CHECK(torch::equal(f.tensor("base_model.model.norm.weight"), s.net->norm->weight.detach()));

  // read_config gives the same fields back.
  const auto pc = lora::peft::read_config((s.dir / "adapter_config.json").string());
  CHECK(pc.r == 4);
  CHECK(pc.lora_alpha == 8);
  CHECK(pc.target_modules == std::vector<std::string>{"q_lin", "v_lin", "head"});
  REQUIRE(pc.modules_to_save);
  CHECK(*pc.modules_to_save == std::vector<std::string>{"norm"});
  REQUIRE(pc.rank_pattern.size() == 1);
  CHECK(pc.rank_pattern[0] == std::pair<std::string, int64_t>{"head", 2});
  fs::remove_all(s.dir);
}

TEST_CASE("peft: HF mapping, Conv1D layers, scaling policies and regex targets", "[peft]") {
  SECTION("a path mapping and Conv1D layers set fan_in_fan_out; A and B keep their layout") {
    lora::peft::SaveOptions opts;
    opts.mapping.to_hf = [](const std::string& p) { return "model." + p; };
    opts.mapping.conv1d = {"q_lin"};
    auto s = saved_adapter("mapping", config(), opts);
    const auto c = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
    CHECK(c["fan_in_fan_out"] == true);
    // Not the identity: the adapted layers by full HF path.
    CHECK(c["target_modules"].size() == 5);
    CHECK(c["target_modules"][0] == "model.head");
    CHECK(c["modules_to_save"] == json::array({"model.norm"}));
    CHECK(c["rank_pattern"] == json({{"model.head", 2}}));
    CHECK(c["alpha_pattern"].size() == 2);
    const lora::safetensors::File f((s.dir / "adapter_model.safetensors").string());
    CHECK(f.info("base_model.model.model.layer.1.q_lin.lora_A.weight").shape == std::vector<int64_t>{4, 16});
    CHECK(f.info("base_model.model.model.layer.1.q_lin.lora_B.weight").shape == std::vector<int64_t>{16, 4});
    // Loading needs the same mapping.
    Net fresh = copy_of(s.net);
    fresh->eval();
    CHECK(contains(error_of<lora::TargetError>([&] { lora::peft::load(*fresh, s.dir.string()); }), "'model.head'"));
    lora::peft::LoadOptions lo;
    lo.mapping = opts.mapping;
    lora::peft::load(*fresh, s.dir.string(), lo);
    CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 0, 0, "mapped round trip"));
    fs::remove_all(s.dir);
  }
  SECTION("rsLoRA is use_rslora; other policies are exported as alpha/r with lora_alpha = s r") {
    auto cfg = config();
    cfg.scaling = lora::scaling::alpha_over_sqrt_rank();
    auto s = saved_adapter("rslora", cfg);
    auto c = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
    CHECK(c["use_rslora"] == true);
    CHECK(c["lora_alpha"] == 8);
    Net fresh = copy_of(s.net);
    fresh->eval();
    lora::peft::load(*fresh, s.dir.string());
    CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 1e-6, 1e-6, "rslora round trip"));
    fs::remove_all(s.dir);

    cfg.scaling = lora::scaling::rank_proportional(3.0);  // s = 3 whatever alpha and r
    s = saved_adapter("propo", cfg);
    c = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
    CHECK(c["use_rslora"] == false);
    CHECK(c["lora_alpha"] == 12);                          // 3 * r
    CHECK(c["alpha_pattern"] == json({{"head", 6}}));      // 3 * 2 on the rank-2 head
    CHECK(c["rank_pattern"] == json({{"head", 2}}));
    fresh = copy_of(s.net);
    fresh->eval();
    auto a = lora::peft::load(*fresh, s.dir.string());
    for (const auto& l : a.layers()) CHECK(l.scale == Approx(3.0));
    CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 1e-6, 1e-6, "rank-proportional round trip"));
    fs::remove_all(s.dir);
  }
  SECTION("regex and all-linear targets are written as the adapted layers' paths") {
    auto cfg = config();
    cfg.targets = {"re:layer\\.1\\..*"};
    cfg.rank_pattern.clear();
    cfg.alpha_pattern.clear();
    auto s = saved_adapter("regex", cfg);
    const auto c = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
    CHECK(c["target_modules"] == json::array({"layer.1.k_lin", "layer.1.q_lin", "layer.1.v_lin"}));
    Net fresh = copy_of(s.net);
    fresh->eval();
    lora::peft::load(*fresh, s.dir.string());
    CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 0, 0, "regex round trip"));
    fs::remove_all(s.dir);
  }
  SECTION("a rank above min(in, out), which PEFT allows, loads") {
    auto cfg = config();
    cfg.rank_pattern = {{"head", 8}};  // head is 16 -> 4
    cfg.allow_rank_above_min = true;
    auto s = saved_adapter("bigrank", cfg);
    CHECK(lora::read_json<nlohmann::json>(s.dir / "adapter_config.json")["rank_pattern"] == json({{"head", 8}}));
    Net fresh = copy_of(s.net);
    fresh->eval();
    auto a = lora::peft::load(*fresh, s.dir.string());
    CHECK(a.layers().back().rank == 8);
    CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 0, 0, "rank 8 on a 16 -> 4 head"));
    fs::remove_all(s.dir);
  }
  SECTION("with exclude, target_modules lists the adapted layers") {
    auto cfg = config();
    cfg.exclude = {"layer.0.v_lin"};
    auto s = saved_adapter("exclude", cfg);
    const auto c = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
    CHECK(c["target_modules"] == json::array({"head", "layer.0.q_lin", "layer.1.q_lin", "layer.1.v_lin"}));
    CHECK_FALSE(c.contains("exclude_modules"));
    CHECK(c["alpha_pattern"] == json({{"v_lin", 4}}));
    Net fresh = copy_of(s.net);
    fresh->eval();
    lora::peft::load(*fresh, s.dir.string());
    CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 0, 0, "exclude round trip"));
    fs::remove_all(s.dir);
  }
  SECTION("a PEFT regex string target and an all-linear file load") {
    auto s = saved_adapter("peftregex");
    auto c = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
    c["target_modules"] = ".*(q_lin|v_lin|head)";
    write_json(s.dir / "adapter_config.json", c);
    Net fresh = copy_of(s.net);
    fresh->eval();
    lora::peft::load(*fresh, s.dir.string());
    CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 0, 0, "regex-string round trip"));
    c["target_modules"] = "all-linear";
    write_json(s.dir / "adapter_config.json", c);
    fresh = copy_of(s.net);
    fresh->eval();
    lora::peft::load(*fresh, s.dir.string());
    CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 0, 0, "all-linear round trip"));
    fs::remove_all(s.dir);
  }
}

TEST_CASE("peft: broken or mismatched adapter folders give their error and leave the model unchanged", "[peft][errors]") {
  auto s = saved_adapter("errors");
  const auto good_config = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
  const auto good_tensors = lora::safetensors::load((s.dir / "adapter_model.safetensors").string());
  const auto bad = temp_dir("errors_bad");
  auto reset = [&] {
    write_json(bad / "adapter_config.json", good_config);
    lora::safetensors::save((bad / "adapter_model.safetensors").string(), good_tensors, {{"format", "pt"}});
  };
  auto edit_config = [&](const std::function<void(json&)>& f) {
    auto c = good_config;
    f(c);
    write_json(bad / "adapter_config.json", c);
  };
  auto edit_tensors = [&](const std::function<void(torch::OrderedDict<std::string, torch::Tensor>&)>& f) {
    auto t = good_tensors;
    f(t);
    lora::safetensors::save((bad / "adapter_model.safetensors").string(), t, {{"format", "pt"}});
  };
  auto rename = [](torch::OrderedDict<std::string, torch::Tensor>& t, const std::string& from, const std::string& to) {
    torch::OrderedDict<std::string, torch::Tensor> out;
    for (const auto& item : t) out.insert(item.key() == from ? to : item.key(), item.value());
    t = out;
  };
  const std::string A0 = "base_model.model.layer.0.q_lin.lora_A.weight";

  Net model = copy_of(s.net);
  model->eval();
  const auto before = snapshot(*model);
  const auto y0 = model->forward(s.x).detach();
  reset();
  std::string msg;
  bool loaded_once = false;  // the last section loads an adapter on purpose

  SECTION("no folder, no weights file") {
    msg = error_of<lora::FileError>([&] { lora::peft::load(*model, (bad / "nope").string()); });
    CHECK(contains(msg, "adapter_model.safetensors"));
    fs::remove(bad / "adapter_model.safetensors");
    std::ofstream(bad / "adapter_model.bin") << "pickle";
    msg = error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "safe_serialization"));
  }
  SECTION("a truncated safetensors file") {
    const auto bytes = lora_test::read_text(s.dir / "adapter_model.safetensors");
    std::ofstream(bad / "adapter_model.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() - 10);
    msg = error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "adapter_model.safetensors"));
  }
  SECTION("adapter_config.json: invalid JSON, missing, or a bad field") {
    std::ofstream(bad / "adapter_config.json") << "{\"r\": 4,";
    msg = error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "not valid JSON"));
    fs::remove(bad / "adapter_config.json");
    msg = error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "adapter_config.json"));
    edit_config([](json& c) { c["r"] = "four"; });
    msg = error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "\"r\""));
  }
  SECTION("unsupported options") {
    edit_config([](json& c) { c["peft_type"] = "PREFIX_TUNING"; });
    msg = error_of<lora::ConfigError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "PREFIX_TUNING"));
    edit_config([](json& c) { c["bias"] = "all"; });
    msg = error_of<lora::ConfigError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "bias"));
    edit_config([](json& c) { c["layers_to_transform"] = {0}; });
    CHECK(contains(error_of<lora::ConfigError>([&] { lora::peft::load(*model, bad.string()); }), "layers_to_transform"));
    edit_config([](json& c) { c["init_lora_weights"] = "loftq"; });
    CHECK(contains(error_of<lora::ConfigError>([&] { lora::peft::load(*model, bad.string()); }), "loftq"));
  }
  SECTION("an unknown module") {
    edit_tensors([&](auto& t) { rename(t, A0, "base_model.model.layer.7.q_lin.lora_A.weight"); });
    msg = error_of<lora::TargetError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "layer.7.q_lin"));
    CHECK(contains(msg, "layer.0.q_lin"));  // among the closest
  }
  SECTION("a wrong shape, a rank that disagrees with the config, a wrong dtype") {
    edit_tensors([&](auto& t) { t[A0] = torch::zeros({4, 15}); });
    msg = error_of<lora::ShapeError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "layer.0.q_lin"));
    CHECK(contains(msg, "[4, 15]"));
    reset();
    edit_config([](json& c) { c["r"] = 8; });
    msg = error_of<lora::ShapeError>([&] { lora::peft::load(*model, bad.string()); });
    CHECK(contains(msg, "rank 4"));
    reset();
    edit_tensors([&](auto& t) { t[A0] = torch::zeros({4, 16}, torch::kLong); });
    CHECK(contains(error_of<lora::ShapeError>([&] { lora::peft::load(*model, bad.string()); }), "I64"));
  }
  SECTION("keys PEFT does not write, a missing lora_B, a missing magnitude") {
    edit_tensors([&](auto& t) { rename(t, A0, "layer.0.q_lin.lora_A.weight"); });
    CHECK(contains(error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); }), "base_model.model."));
    edit_tensors([&](auto& t) { rename(t, A0, "base_model.model.layer.0.q_lin.lora_A.default.weight"); });
    CHECK_FALSE(error_of<lora::Error>([&] { lora::peft::load(*model, bad.string()); }).empty());
    edit_tensors([&](auto& t) {
      torch::OrderedDict<std::string, torch::Tensor> out;
      for (const auto& item : t)
        if (item.key() != "base_model.model.layer.0.q_lin.lora_B.weight") out.insert(item.key(), item.value());
      t = out;
    });
    CHECK(contains(error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); }), "no lora_B"));
    reset();
    edit_config([](json& c) { c["use_dora"] = true; });
    CHECK(contains(error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); }), "lora_magnitude_vector"));
  }
  SECTION("target_modules and the tensors disagree") {
    edit_config([](json& c) { c["target_modules"].push_back("k_lin"); });
    CHECK(contains(error_of<lora::FileError>([&] { lora::peft::load(*model, bad.string()); }), "k_lin"));
    edit_config([](json& c) { c["target_modules"] = json::array({"q_lin", "head"}); });
    CHECK(contains(error_of<lora::ConfigError>([&] { lora::peft::load(*model, bad.string()); }), "v_lin"));
    edit_config([](json& c) { c["target_modules"].push_back("norm"); });
    CHECK(contains(error_of<lora::ConfigError>([&] { lora::peft::load(*model, bad.string()); }), "not a layer LoRA can adapt"));
  }
  SECTION("a modules_to_save tensor of the wrong shape, or one the model lacks") {
    edit_tensors([&](auto& t) { t["base_model.model.norm.weight"] = torch::ones({15}); });
    CHECK(contains(error_of<lora::ShapeError>([&] { lora::peft::load(*model, bad.string()); }), "norm.weight"));
    edit_tensors([&](auto& t) { t.insert("base_model.model.other.weight", torch::ones({3})); });
    CHECK(contains(error_of<lora::TargetError>([&] { lora::peft::load(*model, bad.string()); }), "other.weight"));
  }
  SECTION("the adapter name is taken") {
    lora::peft::LoadOptions o;
    o.adapter_name = "first";
    lora::peft::load(*model, s.dir.string(), o);
    const auto loaded = snapshot(*model);
    CHECK(contains(error_of<lora::ConfigError>([&] { lora::peft::load(*model, s.dir.string(), o); }), "first"));
    CHECK(same(loaded, snapshot(*model)));
    loaded_once = true;
  }
  if (!loaded_once) {
    // Whatever failed, nothing changed: same parameters (no adapter), same outputs, same trainability.
    CHECK(same(before, snapshot(*model)));
    CHECK(torch::equal(model->forward(s.x), y0));
    for (const auto& p : model->named_parameters()) CHECK(p.value().requires_grad());
  }
  fs::remove_all(s.dir);
  fs::remove_all(bad);
}

TEST_CASE("LoRA+: B (and DoRA magnitudes) at ratio x lr, A and kept parameters at lr", "[loraplus]") {
  Net net;
  auto cfg = config();
  cfg.use_dora = true;
  auto a = lora::inject(*net, cfg);
  const auto groups = lora::loraplus_param_groups(a, torch::optim::AdamWOptions(1e-3).weight_decay(0.1), 16.0);
  REQUIRE(groups.size() == 3);
  auto lr = [](const torch::optim::OptimizerParamGroup& g) {
    return static_cast<const torch::optim::AdamWOptions&>(g.options()).lr();
  };
  CHECK(lr(groups[0]) == Approx(1e-3));
  CHECK(lr(groups[1]) == Approx(16e-3));
  CHECK(lr(groups[2]) == Approx(1e-3));
  CHECK(static_cast<const torch::optim::AdamWOptions&>(groups[1].options()).weight_decay() == Approx(0.1));
  CHECK(groups[0].params().size() == 5);       // A of 5 layers
  CHECK(groups[1].params().size() == 5 + 5);   // B and m of 5 layers
  CHECK(groups[2].params().size() == 2);       // norm weight and bias
  for (size_t i = 0; i < 5; ++i) {
    CHECK(groups[0].params()[i].is_same(a.a_parameters()[i]));
    CHECK(groups[1].params()[i].is_same(a.b_parameters()[i]));
  }
  // One step with equal gradients moves B 16 times as far as A (Adam's first step is lr * sign).
  auto opt = lora::make_loraplus_adamw(a, torch::optim::AdamWOptions(1e-3).weight_decay(0), 16.0);
  REQUIRE(opt.param_groups().size() == 3);
  const auto A0 = a.a_parameters()[0].detach().clone(), B0 = a.b_parameters()[0].detach().clone();
  for (auto& p : a.parameters()) p.mutable_grad() = torch::ones_like(p);
  opt.step();
  CHECK((a.a_parameters()[0] - A0).abs().max().item<double>() == Approx(1e-3).epsilon(1e-3));
  CHECK((a.b_parameters()[0] - B0).abs().max().item<double>() == Approx(16e-3).epsilon(1e-3));
  REQUIRE_THROWS_AS(lora::loraplus_param_groups(a, torch::optim::AdamWOptions(1e-3), 0.0), lora::ConfigError);
  REQUIRE_THROWS_AS(lora::make_loraplus_adamw(a, torch::optim::AdamWOptions(1e-3), std::nan("")), lora::ConfigError);
}

namespace {
lora::LayerAdapterSpec dora_spec(int64_t r = 4, double alpha = 8, double dropout = 0) {
  lora::LayerAdapterSpec s;
  s.rank = r;
  s.alpha = alpha;
  s.dropout = dropout;
  s.use_dora = true;
  s.seed = 3;
  return s;
}
/// A DoRA layer with random B and m, so every part of the formula matters.
lora::Linear dora_layer(double dropout = 0) {
  torch::manual_seed(21);
  lora::Linear l(12, 10);
  auto& a = l->add_adapter("default", dora_spec(4, 8, dropout));
  torch::NoGradGuard g;
  a.B.normal_(0, 0.5);
  a.magnitude.mul_(1 + 0.3 * torch::randn_like(a.magnitude));
  return l;
}
}  // namespace

TEST_CASE("DoRA: m starts at the row norms, so the output is unchanged at step 0", "[dora]") {
  torch::manual_seed(20);
  lora::Linear l(12, 10);
  auto x = torch::randn({3, 5, 12});
  const auto base = l(x).detach();
  auto& a = l->add_adapter("default", dora_spec());
  REQUIRE(a.dora());
  CHECK(l->named_parameters().contains("lora_magnitude_vector.default.weight"));
  CHECK(lora_test::allclose(a.magnitude, l->weight.norm(2, {1}), 1e-6, 1e-6, "m = ||W||_row"));
  CHECK(lora_test::allclose(l(x), base, 1e-6, 1e-6, "DoRA at init (B = 0)"));
  // With an init whose B is not zero, m = ||W + s B A|| and the output is LoRA's.
  lora::Linear g(12, 10);
  auto spec = dora_spec();
  spec.init = lora::init::gaussian_gaussian(0.1);
  auto& ag = g->add_adapter("default", spec);
  const auto lora_out = lora_test::lora_linear_reference(x, g->weight, g->bias, ag.A, ag.B, ag.scale);
  CHECK(lora_test::allclose(g(x), lora_out, 1e-5, 1e-5, "DoRA at init (B != 0) = LoRA"));
}

TEST_CASE("DoRA: forward equals the unfused formula, gradients reach m, A and B but not the norm", "[dora]") {
  auto l = dora_layer();
  const auto& a = l->adapter("default");
  auto x = torch::randn({4, 3, 12});
  const auto y = l(x);
  const auto ref = lora_test::dora_linear_reference(x, l->weight, l->bias, a.A, a.B, a.magnitude, a.scale);
  REQUIRE(lora_test::allclose(y, ref, 1e-5, 1e-5, "fused vs unfused"));
  // By hand: (m / ||W + s B A||_row) * (x (W + s B A)^T) + b.
  auto W1 = l->weight + a.scale * a.B.mm(a.A);
  auto hand = (a.magnitude / W1.norm(2, {1})) * torch::matmul(x, W1.t()) + l->bias;
  REQUIRE(lora_test::allclose(y, hand, 1e-5, 1e-5, "by hand"));

  // Gradients: the same as the reference's (whose norm is detached), and dL/dm by hand.
  const auto g = torch::randn_like(y);
  auto grads = torch::autograd::grad({(y * g).sum()}, {a.magnitude, a.A, a.B});
  auto ref2 = lora_test::dora_linear_reference(x, l->weight, l->bias, a.A, a.B, a.magnitude, a.scale);
  auto rgrads = torch::autograd::grad({(ref2 * g).sum()}, {a.magnitude, a.A, a.B});
  CHECK(lora_test::allclose(grads[0], rgrads[0], 1e-5, 1e-5, "dL/dm"));
  CHECK(lora_test::allclose(grads[1], rgrads[1], 1e-5, 1e-5, "dL/dA"));
  CHECK(lora_test::allclose(grads[2], rgrads[2], 1e-5, 1e-5, "dL/dB"));
  torch::NoGradGuard ng;
  const auto t = torch::matmul(x, W1.t()).reshape({-1, 10});  // (N, out)
  const auto dm = (g.reshape({-1, 10}) * t).sum(0) / W1.norm(2, {1});
  CHECK(lora_test::allclose(grads[0], dm, 1e-5, 1e-5, "dL/dm by hand"));
}

TEST_CASE("DoRA: merge and unmerge", "[dora]") {
  auto l = dora_layer();
  auto x = torch::randn({6, 12});
  const auto W0 = l->weight.detach().clone();
  const auto y = l(x).detach();
  l->merge();
  CHECK(l->adapter("default").merged());
  CHECK(lora_test::allclose(l(x), y, 1e-5, 1e-5, "merged"));
  CHECK(lora_test::allclose(l->merged_weight(), l->weight, 0, 0, "nothing pending once merged"));
  l->unmerge();
  CHECK(lora_test::allclose(l->weight, W0, 1e-6, 1e-6, "unmerged weight"));
  CHECK(lora_test::allclose(l(x), y, 1e-5, 1e-5, "unmerged"));
  // merged_weight() computes the merge on a copy.
  const auto W1 = l->weight.detach().clone();
  const auto Wm = l->merged_weight();
  CHECK(torch::equal(l->weight, W1));
  CHECK(lora_test::allclose(torch::matmul(x, Wm.t()) + l->bias, y, 1e-5, 1e-5, "merged_weight"));

  // DoRA then LoRA merged: the forward of both. Taking the DoRA one out first (it rescaled the
  // weight before the LoRA merge) takes the LoRA one out and puts it back.
  lora::LayerAdapterSpec plain = dora_spec(2, 2);
  plain.use_dora = false;
  auto& p = l->add_adapter("plain", plain);
  {
    torch::NoGradGuard g;
    p.B.normal_();
  }
  const auto y2 = l(x).detach();
  l->merge("default");
  l->merge("plain");
  CHECK(lora_test::allclose(l(x), y2, 1e-4, 1e-4, "both merged"));
  l->unmerge("default");
  CHECK_FALSE(l->adapter("default").merged());
  CHECK(l->adapter("plain").merged());
  CHECK(lora_test::allclose(l->weight, W0 + p.delta_weight(), 1e-5, 1e-5, "W0 + plain's delta"));
  l->set_adapters_enabled(false);
  CHECK(lora_test::allclose(l->weight, W0, 1e-5, 1e-5, "disabled: the base weight back"));
  l->set_adapters_enabled(true);
  l->remove_adapter("default");
  CHECK_FALSE(l->named_parameters().contains("lora_magnitude_vector.default.weight"));
}

TEST_CASE("DoRA against PEFT's formula: equal without dropout, a documented difference with it", "[dora]") {
  // The reference is PEFT's computation (peft_dora_reference). With dropout active in training,
  // this library computes the base product once, on x, and drops out only the LoRA branch's
  // input; PEFT evaluates the magnitude's rescaling of the base product on dropout(x) too. The
  // two then differ by exactly (m/n - 1) (x - dropout(x)) W^T, which is zero on average
  // (docs/interop.md, "DoRA").
  auto l = dora_layer(0.5);
  const auto& a = l->adapter("default");
  auto x = torch::randn({8, 12});
  const double p = 0.5;
  const auto factor = a.magnitude / (l->weight + a.scale * a.B.mm(a.A)).norm(2, {1});  // m / n
  const auto difference = [&](const torch::Tensor& dropped) {
    return (factor - 1) * torch::matmul(x - dropped, l->weight.t());
  };

  SECTION("eval mode and p = 0: PEFT's output") {
    l->eval();
    CHECK(lora_test::allclose(l(x), lora_test::peft_dora_reference(x, l->weight, l->bias, a.A, a.B, a.magnitude, a.scale),
                              1e-5, 1e-5, "eval vs PEFT"));
    const auto base = torch::matmul(x, l->weight.t());
    const auto p0 = lora::functional::add_dora(base, x, l->weight, a.A, a.B, a.magnitude, a.scale, 0.0, true) + l->bias;
    CHECK(lora_test::allclose(p0, lora_test::peft_dora_reference(x, l->weight, l->bias, a.A, a.B, a.magnitude, a.scale),
                              1e-5, 1e-5, "p = 0 in training vs PEFT"));
  }
  SECTION("training with dropout: PEFT's output plus (m/n - 1) (x - dropout(x)) W^T") {
    const auto mask = torch::bernoulli(torch::full({8, 12}, 1 - p));
    const auto dropped = x * mask / (1 - p);
    const auto base = torch::matmul(x, l->weight.t());
    const auto got = lora::functional::add_dora(base, x, l->weight, a.A, a.B, a.magnitude, a.scale, p, true, mask) + l->bias;
    const auto peft = lora_test::peft_dora_reference(x, l->weight, l->bias, a.A, a.B, a.magnitude, a.scale, dropped);
    CHECK(lora_test::allclose(got, peft + difference(dropped), 1e-5, 1e-5, "functional with mask vs PEFT + difference"));
    const double gap = (got - peft).abs().max().item<double>();
    CAPTURE(gap);
    CHECK(gap > 1e-3);  // the difference is real: a change to match PEFT must update docs/interop.md and this test

    // The layer in training mode draws its mask with the global generator, first thing.
    l->train();
    torch::manual_seed(99);
    const auto y = l(x).detach();
    torch::manual_seed(99);
    const auto drawn = torch::dropout(x, p, true);
    const auto peft_train = lora_test::peft_dora_reference(x, l->weight, l->bias, a.A, a.B, a.magnitude, a.scale, drawn);
    CHECK(lora_test::allclose(y, peft_train + difference(drawn), 1e-5, 1e-5, "layer in training mode"));
  }
}

TEST_CASE("DoRA through inject(), PEFT files, and its errors", "[dora][peft]") {
  auto cfg = config();
  cfg.use_dora = true;
  auto s = saved_adapter("dora", cfg);
  const auto c = lora::read_json<nlohmann::json>(s.dir / "adapter_config.json");
  CHECK(c["use_dora"] == true);
  const lora::safetensors::File f((s.dir / "adapter_model.safetensors").string());
  CHECK(f.info("base_model.model.layer.0.q_lin.lora_magnitude_vector").shape == std::vector<int64_t>{16});
  CHECK(f.info("base_model.model.head.lora_magnitude_vector").shape == std::vector<int64_t>{4});
  Net fresh = copy_of(s.net);
  fresh->eval();
  auto a = lora::peft::load(*fresh, s.dir.string());
  CHECK(a.dora());
  CHECK(a.magnitude_parameters().size() == 5);
  CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 0, 0, "DoRA round trip"));
  CHECK(a.state_dict().contains("layer.0.q_lin.lora_magnitude_vector"));
  // PEFT's older in-memory name with ".weight" loads too.
  {
    auto t = lora::safetensors::load((s.dir / "adapter_model.safetensors").string());
    torch::OrderedDict<std::string, torch::Tensor> renamed;
    for (const auto& item : t) {
      auto k = item.key();
      if (k.size() > 22 && k.compare(k.size() - 22, 22, ".lora_magnitude_vector") == 0) k += ".weight";
      renamed.insert(k, item.value());
    }
    lora::safetensors::save((s.dir / "adapter_model.safetensors").string(), renamed, {{"format", "pt"}});
    Net other = copy_of(s.net);
    other->eval();
    lora::peft::load(*other, s.dir.string());
    CHECK(lora_test::allclose(other->forward(s.x), s.y, 0, 0, "DoRA magnitude named .weight"));
  }
  // A merged DoRA model computes the same.
  a.merge();
  CHECK(lora_test::allclose(fresh->forward(s.x), s.y, 1e-5, 1e-5, "DoRA merged"));
  a.unmerge();
  // A plain torch::nn::Linear cannot carry DoRA.
  auto seq = torch::nn::Sequential(torch::nn::Linear(4, 4));
  lora::Config dc;
  dc.use_dora = true;
  dc.rank = 2;
  CHECK(contains(error_of<lora::ConfigError>([&] { lora::inject(*seq, dc); }), "lora::Linear"));
  fs::remove_all(s.dir);
}

TEST_CASE("several PEFT adapters on one model: choose the active ones", "[peft][multi]") {
  auto s1 = saved_adapter("multi1");
  auto cfg2 = config();
  cfg2.targets = {"k_lin"};
  cfg2.rank_pattern.clear();
  cfg2.alpha_pattern.clear();
  cfg2.keep_trainable.clear();
  cfg2.seed = 9;
  torch::manual_seed(1);
  Net n2 = copy_of(s1.net);  // the same base, without adapter one
  auto a2 = lora::inject(*n2, cfg2);
  randomize(a2, 17);
  n2->eval();
  const auto d2 = temp_dir("multi2");
  lora::peft::save(a2, d2.string());
  const auto y2 = n2->forward(s1.x).detach();

  Net m = copy_of(s1.net);
  m->eval();
  const auto base = m->forward(s1.x).detach();
  lora::peft::LoadOptions o1, o2;
  o1.adapter_name = "one";
  o2.adapter_name = "two";
  auto h1 = lora::peft::load(*m, s1.dir.string(), o1);
  auto h2 = lora::peft::load(*m, d2.string(), o2);
  // Both active: each adds its own delta.
  const auto both = m->forward(s1.x).detach();
  lora::set_active_adapters(*m, {"one"});
  CHECK(lora_test::allclose(m->forward(s1.x), s1.y, 1e-6, 1e-6, "only one"));
  lora::set_active_adapters(*m, {"two"});
  CHECK(lora_test::allclose(m->forward(s1.x), y2, 1e-6, 1e-6, "only two"));
  lora::set_active_adapters(*m, {});
  CHECK(lora_test::allclose(m->forward(s1.x), base, 0, 0, "none"));
  lora::set_active_adapters(*m, {"one", "two"});
  CHECK(lora_test::allclose(m->forward(s1.x), both, 0, 0, "both again"));
  CHECK(contains(error_of<lora::ConfigError>([&] { lora::set_active_adapters(*m, {"three"}); }), "'one'"));
  h2.remove();
  h1.remove();
  CHECK(m->named_parameters().size() == copy_of(s1.net)->named_parameters().size());
  fs::remove_all(s1.dir);
  fs::remove_all(d2);
}

TEST_CASE("peft: plain torch::nn::Linear models (the compatibility path) save and load too", "[peft]") {
  torch::manual_seed(31);
  auto make = [] {
    return torch::nn::Sequential(torch::nn::Linear(8, 8),
                                 torch::nn::Functional([](const torch::Tensor& t) { return torch::tanh(t); }),
                                 torch::nn::Linear(8, 3));
  };
  auto net = make();
  lora::Config cfg;
  cfg.rank = 2;
  auto a = lora::inject(*net, cfg);
  randomize(a, 8);
  a.sync();
  auto x = torch::randn({4, 8});
  const auto y = net->forward(x).detach();
  const auto dir = temp_dir("plain");
  lora::peft::save(a, dir.string());
  // A PEFT file usually has some dropout: loaded here without it (training-only, no place for it).
  auto c = lora::read_json<nlohmann::json>(dir / "adapter_config.json");
  CHECK(c["target_modules"] == json::array({"0", "2"}));
  c["lora_dropout"] = 0.1;
  write_json(dir / "adapter_config.json", c);
  auto fresh = make();
  {
    torch::NoGradGuard g;
    auto src = net->named_parameters();
    for (auto& p : fresh->named_parameters())
      if (p.key().find("lora_") == std::string::npos) p.value().copy_(src[p.key()]);
  }
  auto b = lora::peft::load(*fresh, dir.string());
  CHECK(b.layers()[0].kind == lora::LayerKind::reparametrized);
  CHECK(lora_test::allclose(fresh->forward(x), y, 0, 0, "plain-Linear round trip"));
  fs::remove_all(dir);
}

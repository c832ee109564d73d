// libFuzzer harnesses for the readers of outside input that need LibTorch, in one executable
// (LibTorch's headers are slow to compile); the harness is chosen by the environment variable
// LORA_FUZZ_TARGET:
//   hub_config   a Hub config.json (examples/common/models/hub_config.hpp), loaded as the
//                programs do (models::load_distilbert / load_gpt2, checkpoint.hpp) next to a
//                small valid model.safetensors: the first input byte picks the model (even:
//                DistilBERT, odd: GPT-2), the rest is config.json;
//   peft_config  a PEFT adapter_config.json (lora::peft::read_config);
//   peft_load    a PEFT adapter folder (lora::peft::load onto a small model): adapter_config.json,
//                then the separator line, then adapter_model.safetensors.
// Run with LORA_FUZZ_SEEDS=DIR, it writes every harness's seeds to DIR/<name>/ and
// dictionaries to DIR/<name>.dict, then exits. Only the library's public API is used for PEFT.
// See fuzz_support.hpp for what counts as a bug, and docs/fuzzing.md.
#include <lora/lora.hpp>
#include <lora/peft.hpp>
#include <lora/safetensors.hpp>
#include <torch/torch.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "models/checkpoint.hpp"

namespace {

namespace fs = std::filesystem;

// ---- hub_config ----

models::DistilBertConfig tiny_distilbert() {
  models::DistilBertConfig c;
  c.vocab_size = 16;
  c.max_position_embeddings = 8;
  c.n_layers = 2;
  c.n_heads = 2;
  c.dim = 8;
  c.hidden_dim = 12;
  c.num_labels = 3;
  return c;
}
models::GPT2Config tiny_gpt2() {
  models::GPT2Config c;
  c.vocab_size = 16;
  c.n_positions = 8;
  c.n_embd = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_inner = 12;
  c.bos_token_id = c.eos_token_id = 15;
  return c;
}
nlohmann::json distilbert_json(const models::DistilBertConfig& c) {
  return {{"model_type", "distilbert"}, {"architectures", {"DistilBertForSequenceClassification"}},
          {"vocab_size", c.vocab_size}, {"max_position_embeddings", c.max_position_embeddings},
          {"n_layers", c.n_layers},     {"n_heads", c.n_heads},
          {"dim", c.dim},               {"hidden_dim", c.hidden_dim},
          {"activation", "gelu"},       {"dropout", 0.1},
          {"id2label", {{"0", "a"}, {"1", "b"}, {"2", "c"}}}};
}
nlohmann::json gpt2_json(const models::GPT2Config& c) {
  return {{"model_type", "gpt2"},  {"architectures", {"GPT2LMHeadModel"}}, {"vocab_size", c.vocab_size},
          {"n_positions", c.n_positions}, {"n_embd", c.n_embd}, {"n_layer", c.n_layer}, {"n_head", c.n_head},
          {"n_inner", nullptr},    {"activation_function", "gelu_new"},  {"bos_token_id", 15}, {"eos_token_id", 15}};
}

/// A folder with a model.safetensors of the tiny model, as the Hub stores it (GPT-2's Conv1D
/// weights (in, out)).
template <typename Model>
fs::path tiny_checkpoint(const std::string& name, Model model, bool gpt2) {
  const auto dir = fuzz::work_dir() / name;
  fs::create_directories(dir);
  torch::OrderedDict<std::string, torch::Tensor> state;
  for (const auto& p : models::detail::base_parameters(*model)) {
    const auto& k = p.key();
    const bool conv1d = gpt2 && (models::detail::ends_with(k, ".c_attn.weight") || models::detail::ends_with(k, ".c_proj.weight") ||
                                 models::detail::ends_with(k, ".c_fc.weight"));
    state.insert(k, conv1d ? p.value().t().contiguous() : p.value().contiguous());
  }
  lora::safetensors::save((dir / "model.safetensors").string(), state);
  return dir;
}

void hub_config(const std::string& in) {
  if (in.empty()) return;
  static const fs::path distilbert_dir =
      tiny_checkpoint("distilbert", models::DistilBertForSequenceClassification(tiny_distilbert()), false);
  static const fs::path gpt2_dir = tiny_checkpoint("gpt2", models::GPT2LMHeadModel(tiny_gpt2()), true);
  const bool gpt2 = in[0] & 1;
  const auto dir = gpt2 ? gpt2_dir : distilbert_dir;
  const auto config = fuzz::write_file((gpt2 ? "gpt2/" : "distilbert/") + std::string("config.json"), in.substr(1));
  try {
    if (gpt2) {
      auto loaded = models::load_gpt2(dir.string());
      const auto logits = loaded.model->forward(torch::zeros({1, 2}, torch::kLong));
      fuzz::expect(logits.size(-1) == loaded.config.vocab_size, "logits of a wrong size");
    } else {
      auto loaded = models::load_distilbert(dir.string());
      const auto logits = loaded.model->forward(torch::zeros({1, 2}, torch::kLong)).logits;
      fuzz::expect(logits.size(-1) == loaded.config.num_labels, "logits of a wrong size");
    }
  } catch (const lora::Error& e) {  // the library's safetensors reader
    fuzz::rejected(e, {config, (dir / "model.safetensors").string()});
  } catch (const examples::Error& e) {  // the example's config and checkpoint checks
    fuzz::rejected(e, {config, (dir / "model.safetensors").string()});
  }
}

// ---- PEFT ----

/// A small model with plain Linear layers (the compatibility path of inject / load).
struct TinyNetImpl : torch::nn::Module {
  TinyNetImpl() {
    q = register_module("q", torch::nn::Linear(8, 8));
    v = register_module("v", torch::nn::Linear(8, 8));
    fc = register_module("fc", torch::nn::Linear(8, 4));
  }
  torch::Tensor forward(const torch::Tensor& x) { return fc(q(x) + v(x)); }
  torch::nn::Linear q{nullptr}, v{nullptr}, fc{nullptr};
};
TORCH_MODULE(TinyNet);

const std::string kWeightsSeparator = "\n=== adapter_model.safetensors ===\n";

void peft_config(const std::string& in) {
  const auto path = fuzz::write_file("adapter_config.json", in);
  try {
    const auto c = lora::peft::read_config(path);
    fuzz::expect(c.r > 0, "a rank <= 0 was accepted");
  } catch (const lora::Error& e) {
    fuzz::rejected(e, {path});
  }
}

void peft_load(const std::string& in) {
  const auto [config, weights] = fuzz::split(in, kWeightsSeparator);
  const auto dir = fuzz::work_dir() / "adapter";
  fs::create_directories(dir);
  const auto config_path = fuzz::write_file("adapter/adapter_config.json", config);
  const auto weights_path = fuzz::write_file("adapter/adapter_model.safetensors", weights);
  TinyNet net;
  try {
    auto adapters = lora::peft::load(*net, dir.string());
    const auto y = net->forward(torch::ones({2, 8}));
    fuzz::expect(y.sizes() == torch::IntArrayRef({2, 4}), "the adapted model's output changed shape");
  } catch (const lora::Error& e) {
    fuzz::rejected(e, {dir.string(), config_path, weights_path});
  }
}

// ---- seeds ----

void write_all_seeds(const fs::path& out) {
  fuzz::write_seeds(out, "hub_config",
                    {{"distilbert.json", "0" + distilbert_json(tiny_distilbert()).dump(2)},
                     {"gpt2.json", "1" + gpt2_json(tiny_gpt2()).dump(2)}},
                    {"\"model_type\"", "\"distilbert\"", "\"gpt2\"", "\"dim\"", "\"n_embd\"", "\"n_layers\"", "\"n_layer\"",
                     "\"n_heads\"", "\"n_head\"", "\"vocab_size\"", "\"hidden_dim\"", "\"n_inner\"", "\"n_positions\"",
                     "\"max_position_embeddings\"", "\"id2label\"", "\"activation\"", "\"activation_function\"", "\"relu\"",
                     "null", "-1", "0", "1000000000000", "9223372036854775807", "18446744073709551615", "1e308", "0.5"});
  // Adapters saved by this library: all-linear and q/v-only, rank 2 and 4.
  std::vector<std::pair<std::string, std::string>> configs, folders;
  int n = 0;
  for (const auto& targets : {std::vector<std::string>{"q", "v"}, std::vector<std::string>{"all-linear"}}) {
    for (int64_t rank : {2, 4}) {
      TinyNet net;
      lora::Config cfg;
      cfg.rank = rank;
      cfg.alpha = 2 * rank;
      cfg.targets = targets;
      cfg.output_heads = {};
      auto adapters = lora::inject(*net, cfg);
      const auto dir = fuzz::work_dir() / ("seed" + std::to_string(n));
      lora::peft::save(adapters, dir.string());
      const auto c = fuzz::read_all((dir / lora::peft::kConfigFile).string());
      configs.emplace_back("config" + std::to_string(n), c);
      folders.emplace_back("folder" + std::to_string(n),
                           c + kWeightsSeparator + fuzz::read_all((dir / lora::peft::kWeightsFile).string()));
      ++n;
    }
  }
  const std::vector<std::string> peft_tokens = {
      "\"peft_type\"", "\"LORA\"", "\"r\"", "\"lora_alpha\"", "\"target_modules\"", "\"exclude_modules\"",
      "\"rank_pattern\"", "\"alpha_pattern\"", "\"use_rslora\"", "\"use_dora\"", "\"fan_in_fan_out\"",
      "\"modules_to_save\"", "\"init_lora_weights\"", "\"bias\"", "\"all\"", "\"lora_only\"", "\"all-linear\"",
      "\"q\"", "\"v\"", "\"fc\"", "\"re:.*\"", "null", "-1", "0", "1e308", "true", "false"};
  fuzz::write_seeds(out, "peft_config", configs, peft_tokens);
  auto load_tokens = peft_tokens;
  for (const char* t : {"base_model.model.q.lora_A.weight", "base_model.model.v.lora_B.weight", "lora_magnitude_vector",
                        "\"dtype\":", "\"shape\":", "\"data_offsets\":", "\"F32\"", "\"F16\"", "\"BF16\""})
    load_tokens.push_back(t);
  load_tokens.push_back(kWeightsSeparator);
  fuzz::write_seeds(out, "peft_load", folders, load_tokens);
}

using Harness = void (*)(const std::string&);
Harness harness = nullptr;

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  torch::set_num_threads(1);
  if (const char* dir = fuzz::seeds_dir()) {
    write_all_seeds(dir);
    std::exit(0);
  }
  const char* target = std::getenv("LORA_FUZZ_TARGET");
  const std::string t = target ? target : "";
  harness = t == "hub_config" ? hub_config : t == "peft_config" ? peft_config : t == "peft_load" ? peft_load : nullptr;
  if (!harness) {
    std::fprintf(stderr, "model_files_fuzz: set LORA_FUZZ_TARGET to hub_config, peft_config or peft_load\n");
    std::exit(2);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  harness(fuzz::bytes(data, size));
  return 0;
}

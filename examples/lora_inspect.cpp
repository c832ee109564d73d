// lora_inspect: check a download, a tokenizer or a model from the command line. JSON on
// stdout; errors on stderr with exit code 1.
//
//   lora_inspect tensors FILE.safetensors
//   lora_inspect tokenize --tokenizer-dir D --kind bert|gpt2 (--text-file F | --texts F.json)
//   lora_inspect forward --model-dir D --input F.json [--adapter PEFT_DIR]
//   lora_inspect ppl --model-dir D --text-file F [--block-size N] [--max-blocks K]
#include <CLI/CLI.hpp>
#include <lora/lora.hpp>
#include <lora/safetensors.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "data/batching.hpp"
#include "data/wikitext.hpp"
#include "error_message.hpp"
#include "errors.hpp"
#include "models/checkpoint.hpp"
#include "models/export.hpp"
#include "text/bpe.hpp"
#include "text/wordpiece.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

/// A tensor as nested JSON lists of doubles (full float precision).
json to_json(const torch::Tensor& t) {
  auto x = t.detach().to(torch::kCPU, torch::kDouble).contiguous();
  if (x.dim() == 0) return x.item<double>();
  json out = json::array();
  for (int64_t i = 0; i < x.size(0); ++i) out.push_back(to_json(x[i]));
  return out;
}

/// Nested JSON lists of integers -> an int64 tensor (B, T); rows must have equal lengths.
torch::Tensor ids_tensor(const json& rows, const char* field) {
  if (!rows.is_array() || rows.empty() || !rows[0].is_array())
    throw examples::DataError(examples::str("input field '", field, "' must be a non-empty list of lists of integers"));
  const auto T = rows[0].size();
  std::vector<int64_t> flat;
  for (const auto& r : rows) {
    if (r.size() != T)
      throw examples::DataError(examples::str("input field '", field, "': rows have different lengths (", T, " and ",
                                                  r.size(), "); pad them and pass an attention_mask"));
    for (const auto& v : r) flat.push_back(v.get<int64_t>());
  }
  return torch::tensor(flat, torch::kLong).reshape({static_cast<int64_t>(rows.size()), static_cast<int64_t>(T)});
}

std::string model_type(const std::string& dir) {
  const auto cfg = lora::read_json<json>((fs::path(dir) / "config.json").string(), "model config");
  return cfg.value("model_type", std::string());
}

int cmd_tensors(const std::string& file) {
  lora::safetensors::File f(file);
  json tensors = json::array();
  for (const auto& t : f.tensors()) tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
  std::cout << json{{"file", file}, {"metadata", f.metadata()}, {"tensors", tensors}}.dump() << "\n";
  return 0;
}

int cmd_tokenize(const std::string& dir, const std::string& kind, const std::string& text_file,
                 const std::string& texts_json) {
  std::vector<std::string> texts;
  if (!texts_json.empty()) {
    texts = lora::read_json<json>(texts_json, "texts file").at("texts").get<std::vector<std::string>>();
  } else {
    std::ifstream in(text_file, std::ios::binary);
    if (!in) throw examples::FileError(examples::str("cannot open --text-file '", text_file, "'"));
    for (std::string line; std::getline(in, line);) texts.push_back(line);
  }
  json ids = json::array();
  if (kind == "bert") {
    text::WordPieceTokenizer tok(fs::path(dir) / "vocab.txt");
    for (const auto& t : texts) ids.push_back(tok.encode(t));
  } else {
    text::BpeTokenizer tok(fs::path(dir) / "vocab.json", fs::path(dir) / "merges.txt");
    for (const auto& t : texts) ids.push_back(tok.encode(t));
  }
  std::cout << json{{"ids", ids}}.dump() << "\n";
  return 0;
}

/// Loads the PEFT adapter folder `adapter` (if given) onto `model`; returns the adapter's
/// description for the output.
json apply_adapter(torch::nn::Module& model, const std::string& adapter, const lora::peft::HfMapping& mapping) {
  if (adapter.empty()) return nullptr;
  lora::peft::LoadOptions opts;
  opts.mapping = mapping;
  const auto a = lora::peft::load(model, adapter, opts);
  return {{"dir", adapter}, {"layers", a.layers().size()}, {"dora", a.dora()}};
}

int cmd_forward(const std::string& dir, const std::string& input_file, const std::string& adapter) {
  const auto input = lora::read_json<json>(input_file, "input file");
  const auto ids = ids_tensor(input.at("input_ids"), "input_ids");  // (B, T)
  torch::Tensor mask;
  if (input.contains("attention_mask") && !input["attention_mask"].is_null())
    mask = ids_tensor(input["attention_mask"], "attention_mask");
  torch::NoGradGuard no_grad;
  json out;
  const auto type = model_type(dir);
  if (type == "distilbert") {
    lora::safetensors::File weights((fs::path(dir) / "model.safetensors").string());
    const bool mlm = !weights.contains("classifier.weight") && (weights.contains("vocab_projector.bias") ||
                                                                weights.contains("vocab_transform.weight"));
    if (mlm) {
      auto loaded = models::load_distilbert_mlm(dir);
      const auto applied = apply_adapter(*loaded.model, adapter, models::distilbert_peft_mapping());
      loaded.model->eval();
      auto y = loaded.model->forward(ids, mask);
      out = {{"model", "DistilBertForMaskedLM"}, {"logits", to_json(y.logits)},
             {"last_hidden_state", to_json(y.last_hidden_state)}};
      if (!applied.is_null()) out["adapter"] = applied;
    } else {
      auto loaded = models::load_distilbert(dir);
      const auto applied = apply_adapter(*loaded.model, adapter, models::distilbert_peft_mapping());
      loaded.model->eval();
      auto y = loaded.model->forward(ids, mask);
      out = {{"model", "DistilBertForSequenceClassification"}, {"logits", to_json(y.logits)},
             {"last_hidden_state", to_json(y.last_hidden_state)}};
      if (!loaded.report.initialized.empty()) out["note"] = "the classification head was not in the checkpoint: random (seed 0)";
      if (!applied.is_null()) out["adapter"] = applied;
    }
  } else if (type == "gpt2") {
    auto loaded = models::load_gpt2(dir);
    const auto applied = apply_adapter(*loaded.model, adapter, models::gpt2_peft_mapping());
    loaded.model->eval();
    auto logits = loaded.model->forward(ids, mask);  // (B, T, V)
    out = {{"model", "GPT2LMHeadModel"}, {"logits", to_json(logits)}};
    if (!applied.is_null()) out["adapter"] = applied;
    if (input.contains("labels") && !input["labels"].is_null())
      out["loss"] = models::causal_lm_loss(logits, ids_tensor(input["labels"], "labels")).item<double>();
  } else {
    throw examples::FileError(examples::str("'", dir, "/config.json' has model_type '", type,
                                                "'; lora_inspect forward supports distilbert and gpt2"));
  }
  std::cout << out.dump() << "\n";
  return 0;
}

int cmd_ppl(const std::string& dir, const std::string& text_file, int64_t block_size, int64_t batch_size,
            int64_t max_blocks) {
  if (model_type(dir) != "gpt2")
    throw examples::UsageError(examples::str("lora_inspect ppl needs a GPT-2 folder; '", dir, "' is not one"));
  auto loaded = models::load_gpt2(dir);
  loaded.model->eval();
  text::BpeTokenizer tok(fs::path(dir) / "vocab.json", fs::path(dir) / "merges.txt");
  auto split = data::load_wikitext(text_file, [&](const std::string& s) { return tok.encode(s); }, block_size);
  if (max_blocks > 0 && static_cast<size_t>(max_blocks) < split.blocks.size())
    split.blocks.resize(static_cast<size_t>(max_blocks));  // the first K blocks, as wikitext_sweep's --test-size
  torch::NoGradGuard no_grad;
  models::TokenNll total;
  data::BatchOptions opts;
  opts.max_len = block_size;
  opts.pad_id = tok.eos_id();
  for (size_t i = 0; i < split.blocks.size(); i += static_cast<size_t>(batch_size)) {
    std::vector<size_t> batch;
    for (size_t j = i; j < std::min(split.blocks.size(), i + static_cast<size_t>(batch_size)); ++j) batch.push_back(j);
    const auto b = data::collate_lm(split.blocks, batch, opts);
    total += models::causal_lm_nll(loaded.model->forward(b.input_ids, b.attention_mask), b.labels);
  }
  std::cout << json{{"ppl", total.perplexity()},
                    {"nll", total.nll},
                    {"tokens", total.tokens},
                    {"blocks", split.blocks.size()},
                    {"block_size", block_size},
                    {"rule", "exp(token-weighted mean NLL over every predicted token; padding not counted)"}}
                   .dump()
            << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"lora_inspect: look into safetensors files, tokenizers and models (JSON on stdout)"};
  app.require_subcommand(1);

  std::string file;
  auto* tensors = app.add_subcommand("tensors", "name, dtype and shape of every tensor of a .safetensors file");
  tensors->add_option("file", file, "the .safetensors file")->required();

  std::string tok_dir, kind, text_file, texts_json;
  auto* tokenize = app.add_subcommand("tokenize", "token ids of each text ({\"ids\": [[...], ...]})");
  tokenize->add_option("--tokenizer-dir", tok_dir, "folder with vocab.txt (bert) or vocab.json + merges.txt (gpt2)")
      ->required();
  tokenize->add_option("--kind", kind, "bert (WordPiece, with [CLS]/[SEP]) or gpt2 (byte-level BPE)")
      ->required()
      ->check(CLI::IsMember({"bert", "gpt2"}));
  auto* tf = tokenize->add_option("--text-file", text_file, "one text per line");
  auto* tj = tokenize->add_option("--texts", texts_json, "JSON {\"texts\": [...]} (for texts with newlines)");
  tf->excludes(tj);

  std::string model_dir, input, adapter_dir;
  auto* forward = app.add_subcommand("forward", "logits (and last_hidden_state or loss) for given input ids");
  forward->add_option("--model-dir", model_dir, "Hub folder: config.json + model.safetensors")->required();
  forward->add_option("--input", input,
                      "JSON {\"input_ids\": [[...]], \"attention_mask\": [[...]] or null, \"labels\": [[...]] (GPT-2)}")
      ->required();
  forward->add_option("--adapter", adapter_dir,
                      "PEFT adapter folder (adapter_config.json + adapter_model.safetensors) to load onto the model "
                      "before the forward pass");

  int64_t block_size = 1024, batch = 8, max_blocks = 0;
  std::string ppl_text;
  auto* ppl = app.add_subcommand("ppl", "perplexity of a GPT-2 model on a WikiText raw file");
  ppl->add_option("--model-dir", model_dir, "GPT-2 Hub folder (config.json, model.safetensors, vocab.json, merges.txt)")
      ->required();
  ppl->add_option("--text-file", ppl_text, "a WikiText .raw file")->required();
  ppl->add_option("--block-size", block_size, "tokens per block")->check(CLI::PositiveNumber);
  ppl->add_option("--batch-size", batch, "blocks per forward pass")->check(CLI::PositiveNumber);
  ppl->add_option("--max-blocks", max_blocks, "evaluate the first K blocks only (0: all)")->check(CLI::NonNegativeNumber);

  CLI11_PARSE(app, argc, argv);
  try {
    if (*tensors) return cmd_tensors(file);
    if (*tokenize) {
      if (text_file.empty() && texts_json.empty()) throw examples::UsageError("tokenize needs --text-file or --texts");
      return cmd_tokenize(tok_dir, kind, text_file, texts_json);
    }
    if (*forward) return cmd_forward(model_dir, input, adapter_dir);
    if (*ppl) return cmd_ppl(model_dir, ppl_text, block_size, batch, max_blocks);
  } catch (const std::exception& e) {
    std::cerr << "lora_inspect: " << examples::message(e) << "\n";
    return 1;
  }
  return 0;
}

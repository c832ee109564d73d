// serve_adapters: many LoRA adapters on one base model, answering batches whose rows each name
// their adapter (lora::RowRouting, docs/serving.md). Loads a GPT-2 Hub folder and PEFT adapter
// folders, reads requests (one per line: the adapter's name, a tab, the text; "-" for the base
// model alone), scores each text under its own adapter in batches of mixed adapters (one
// forward per batch, not one per adapter), and prints per row the perplexity of its text, then
// the throughput.
//
//   serve_adapters --model-dir ../shared/fixtures/gpt2_pretrained_tiny \
//                  --adapter news=out/news-adapter --adapter wiki=out/wiki-adapter \
//                  --requests requests.tsv
//
// Every adapter folder is one lora::peft::load (under its own name); then each batch runs in a
// RowRouting scope naming each row's adapter.
#include <CLI/CLI.hpp>
#include <lora/lora.hpp>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "errors.hpp"
#include "models/checkpoint.hpp"
#include "models/export.hpp"
#include "program_main.hpp"
#include "text/bpe.hpp"

namespace fs = std::filesystem;

namespace {

struct Flags {
  std::string model_dir, requests;
  std::vector<std::string> adapters;  // NAME=DIR
  int64_t batch_size = 16;
  int64_t max_len = 128;
  int threads = 0;
};

struct Request {
  std::string adapter;  // lora::kBaseOnly for the base model
  std::string text;
};

/// The requests file: "NAME<TAB>text" per line ("-" names the base model); empty lines skipped.
std::vector<Request> read_requests(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw examples::FileError("cannot open --requests file '" + path + "'");
  std::vector<Request> out;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    const auto tab = line.find('\t');
    if (tab == std::string::npos)
      throw examples::DataError(examples::str("--requests '", path, "' line ", n,
                                              ": expected the adapter's name, a tab, then the text"));
    const auto name = line.substr(0, tab);
    out.push_back({name == "-" ? lora::kBaseOnly : name, line.substr(tab + 1)});
  }
  if (out.empty()) throw examples::DataError("--requests '" + path + "' holds no request");
  return out;
}

int run(const Flags& f) {
  if (f.threads > 0) torch::set_num_threads(f.threads);
  auto loaded = models::load_gpt2(f.model_dir);
  auto& model = loaded.model;
  const text::BpeTokenizer tok(fs::path(f.model_dir) / "vocab.json", fs::path(f.model_dir) / "merges.txt");

  // Each adapter folder under its own name, on the one model.
  for (const auto& spec : f.adapters) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0)
      throw examples::UsageError("--adapter '" + spec + "': expected NAME=DIR");
    lora::peft::LoadOptions o;
    o.mapping = models::gpt2_peft_mapping();
    o.adapter_name = spec.substr(0, eq);
    const auto handle = lora::peft::load(*model, spec.substr(eq + 1), o);
    std::cout << "loaded adapter '" << handle.name() << "' from " << spec.substr(eq + 1) << " ("
              << handle.layers().size() << " layers, " << handle.trainable_parameter_count() << " values)\n";
  }
  model->eval();
  torch::NoGradGuard no_grad;

  const auto requests = read_requests(f.requests);
  std::printf("%5s  %-16s %7s %12s  %s\n", "row", "adapter", "tokens", "perplexity", "text");
  int64_t tokens = 0;
  double seconds = 0;
  for (size_t first = 0; first < requests.size(); first += static_cast<size_t>(f.batch_size)) {
    const auto n = std::min(requests.size() - first, static_cast<size_t>(f.batch_size));
    // The batch: each row's ids, padded on the right to the longest (labels -100 there).
    std::vector<std::vector<int64_t>> ids(n);
    std::vector<std::string> names(n);
    int64_t T = 1;
    for (size_t i = 0; i < n; ++i) {
      ids[i] = tok.encode(requests[first + i].text);
      if (static_cast<int64_t>(ids[i].size()) > f.max_len) ids[i].resize(static_cast<size_t>(f.max_len));
      if (ids[i].empty()) ids[i].push_back(0);
      names[i] = requests[first + i].adapter;
      T = std::max<int64_t>(T, static_cast<int64_t>(ids[i].size()));
    }
    auto input = torch::zeros({static_cast<int64_t>(n), T}, torch::kLong);
    auto mask = torch::zeros_like(input);
    auto labels = torch::full_like(input, -100);
    for (size_t i = 0; i < n; ++i) {
      const auto len = static_cast<int64_t>(ids[i].size());
      const auto row = torch::tensor(ids[i], torch::kLong);
      input[i].narrow(0, 0, len).copy_(row);
      labels[i].narrow(0, 0, len).copy_(row);
      mask[i].narrow(0, 0, len).fill_(1);
    }
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor logits;  // (n, T, V)
    {
      lora::RowRouting route(*model, names);  // row i through adapter names[i]
      logits = model(input, mask);
    }
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (size_t i = 0; i < n; ++i) {
      const auto [nll, count] = models::causal_lm_nll_sum(logits.narrow(0, i, 1), labels.narrow(0, i, 1));
      const auto c = count.item<int64_t>();
      tokens += static_cast<int64_t>(ids[i].size());
      const auto& text = requests[first + i].text;
      std::printf("%5zu  %-16s %7zu %12s  %s\n", first + i, names[i].empty() ? "(base)" : names[i].c_str(),
                  ids[i].size(), c ? std::to_string(std::exp(nll.item<double>() / c)).c_str() : "-",
                  (text.size() > 48 ? text.substr(0, 45) + "..." : text).c_str());
    }
  }
  std::printf("%zu requests, %lld tokens in %.3f s of forward passes: %.0f tokens/s, %.1f requests/s\n",
              requests.size(), static_cast<long long>(tokens), seconds, tokens / seconds, requests.size() / seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app("serve_adapters: score texts under many LoRA adapters on one GPT-2, each row through its own adapter",
               "serve_adapters");
  app.option_defaults()->always_capture_default();
  app.add_option("--model-dir", f.model_dir, "GPT-2 Hub folder: config.json, model.safetensors, vocab.json, merges.txt")
      ->required();
  app.add_option("--adapter", f.adapters, "NAME=DIR: a PEFT adapter folder, served under NAME (repeatable)");
  app.add_option("--requests", f.requests, "file: one request per line, the adapter's NAME (\"-\": base), a tab, the text")
      ->required();
  app.add_option("--batch-size", f.batch_size, "requests per forward pass")->check(CLI::PositiveNumber);
  app.add_option("--max-len", f.max_len, "tokens per request, at most")->check(CLI::PositiveNumber);
  app.add_option("--threads", f.threads, "CPU threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  return examples::program_main(app, argc, argv, "serve_adapters", [&] { return run(f); });
}

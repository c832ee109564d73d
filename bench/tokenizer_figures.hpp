// lora_bench's tokenizer figures: one-thread WordPiece and GPT-2 BPE throughput on
// wiki.valid.raw and the AG-News test set, a cold pass per corpus, in one worker process.
#pragma once

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <data/agnews.hpp>
#include <text/bpe.hpp>
#include <text/wordpiece.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "figures.hpp"
#include "options.hpp"
#include "timing.hpp"
#include "worker.hpp"

namespace bench {

/// The text of the file at `p`.
inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string() + " (set --shared-dir or LORA_SHARED_DIR)");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// The tokenizer worker's one command: time both tokenizers on both corpora.
inline Handler tokenizer_handler(const Options& o) {
  const auto data_dir = o.shared_dir / "data";
  std::vector<std::pair<std::string, std::vector<std::string>>> corpora;
  {
    std::vector<std::string> lines;
    std::istringstream in(read_text(data_dir / "wikitext-2-raw" / "wiki.valid.raw"));
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    corpora.emplace_back("wiki.valid.raw", std::move(lines));
    std::vector<std::string> texts;
    for (const auto& ex : data::read_agnews(data_dir / "agnews" / "test.csv")) texts.push_back(ex.text);
    corpora.emplace_back("agnews test", std::move(texts));
  }
  return [corpora, data_dir](const json&) -> json {
    json rows = json::array();
    double bytes_all = 0, wp_s = 0, bpe_s = 0;
    for (const auto& [name, texts] : corpora) {
      double bytes = 0;
      for (const auto& t : texts) bytes += static_cast<double>(t.size());
      bytes_all += bytes;
      auto time_pass = [&](auto& tok, size_t& ids) {
        const auto t0 = clock_type::now();
        for (const auto& t : texts) ids += tok.encode(t).size();
        return seconds_since(t0);
      };
      size_t wp_ids = 0, bpe_ids = 0, ignored = 0;
      // Fresh tokenizers per corpus: the first pass runs with a cold BPE cache.
      const text::WordPieceTokenizer wp(data_dir / "tokenizers" / "bert-base-uncased" / "vocab.txt");
      const text::BpeTokenizer bpe(data_dir / "tokenizers" / "gpt2" / "vocab.json",
                                   data_dir / "tokenizers" / "gpt2" / "merges.txt");
      const double a = time_pass(wp, wp_ids), b = time_pass(bpe, bpe_ids);
      const double b_warm = time_pass(bpe, ignored);
      wp_s += a;
      bpe_s += b;
      rows.push_back({{"corpus", name},
                      {"mb", bytes / 1e6},
                      {"wordpiece_mb_s", bytes / 1e6 / a},
                      {"wordpiece_ids", wp_ids},
                      {"bpe_mb_s", bytes / 1e6 / b},
                      {"bpe_warm_mb_s", bytes / 1e6 / b_warm},
                      {"bpe_ids", bpe_ids}});
    }
    return {{"wordpiece_mb_s", bytes_all / 1e6 / wp_s}, {"bpe_mb_s", bytes_all / 1e6 / bpe_s}, {"rows", rows}};
  };
}

/// Runs the tokenizer figures into `figs` and `details`.
inline void measure_tokenizers(const Options& o, Figures& figs, json& details) {
  fmt::print("\n[tokenizers] one thread, cold pass per corpus\n");
  std::fflush(stdout);
  Worker w("tokenizers", [o] { return tokenizer_handler(o); }, o);
  auto r = w.call({{"op", "run"}});
  w.finish();
  figs("wordpiece_mb_s").value = r["wordpiece_mb_s"].get<double>();
  figs("bpe_mb_s").value = r["bpe_mb_s"].get<double>();
  details["tokenizers"] = r["rows"];
  for (const auto& row : r["rows"])
    fmt::print("  {:<15} {:5.2f} MB: WordPiece {:.2f} MB/s, BPE {:.2f} MB/s (warm cache {:.2f} MB/s)\n",
               row["corpus"].get<std::string>(), row["mb"].get<double>(), row["wordpiece_mb_s"].get<double>(),
               row["bpe_mb_s"].get<double>(), row["bpe_warm_mb_s"].get<double>());
}

}  // namespace bench

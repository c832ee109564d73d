// One-thread throughput (MB/s of UTF-8 input) of the WordPiece and GPT-2 BPE tokenizers on
// WikiText-2 valid (line by line) and the AG-News test set (title + " " + description per row).
//
//   tokenizer_bench [--shared DIR] [--wiki FILE] [--agnews FILE] [--bert-vocab FILE]
//                   [--gpt2-vocab FILE] [--gpt2-merges FILE] [--repeat N] [--json FILE]
//
// Paths default to DIR/data/... with DIR = --shared, else $LORA_SHARED_DIR, else ../shared.
// Each tokenizer is loaded fresh, so the first pass runs with a cold BPE cache ("cold"); "warm"
// is the best of N further passes. The JSON fields wordpiece_mb_s and bpe_mb_s are the cold
// figures over both corpora together.
#include <text/bpe.hpp>
#include <text/wordpiece.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct Options {
  fs::path wiki, agnews, bert_vocab, gpt2_vocab, gpt2_merges, json;
  int repeat = 3;
};

/// Whole file as a string; exits with a message if it cannot be read.
std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    std::cerr << "tokenizer_bench: cannot read " << p << " (set --shared or LORA_SHARED_DIR)\n";
    std::exit(2);
  }
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// The lines of `text`, without their newlines.
std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

/// Records of an RFC 4180 CSV file (quoted fields, "" for a quote, newlines inside quotes).
std::vector<std::vector<std::string>> parse_csv(const std::string& text) {
  std::vector<std::vector<std::string>> rows(1, std::vector<std::string>(1));
  bool quoted = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    auto& field = rows.back().back();
    if (quoted) {
      if (c != '"') field += c;
      else if (i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
      else quoted = false;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      rows.back().emplace_back();
    } else if (c == '\n') {
      rows.emplace_back(1);
    } else if (c != '\r') {
      field += c;
    }
  }
  if (rows.back().size() == 1 && rows.back()[0].empty()) rows.pop_back();
  return rows;
}

/// AG-News texts: title + " " + description of each (class, title, description) row.
std::vector<std::string> agnews_texts(const std::string& csv) {
  std::vector<std::string> texts;
  for (const auto& row : parse_csv(csv))
    if (row.size() >= 3) texts.push_back(row[1] + " " + row[2]);
  return texts;
}

std::size_t total_bytes(const std::vector<std::string>& texts) {
  std::size_t n = 0;
  for (const auto& t : texts) n += t.size();
  return n;
}

/// Seconds taken by one pass of `encode` over `texts`; adds the id count to `ids`.
template <typename Encode>
double time_pass(const std::vector<std::string>& texts, Encode&& encode, std::size_t& ids) {
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& t : texts) ids += encode(t).size();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// One table row: cold and warm throughput of a tokenizer on a corpus.
struct Result {
  std::string tokenizer, corpus;
  std::size_t bytes = 0, ids = 0;
  double cold_s = 0, warm_s = 0;
  double mb_s(double s) const { return s > 0 ? static_cast<double>(bytes) / 1e6 / s : 0; }
};

/// Measures `make()`'s tokenizer on `texts`: a fresh instance, one cold pass, then the best of `repeat`.
template <typename Make>
Result measure(const std::string& name, const std::string& corpus, const std::vector<std::string>& texts, Make&& make,
               int repeat) {
  Result r{name, corpus, total_bytes(texts)};
  auto tok = make();
  auto encode = [&](const std::string& t) { return tok.encode(t); };
  r.cold_s = time_pass(texts, encode, r.ids);
  r.warm_s = r.cold_s;
  for (int k = 0; k < repeat; ++k) {
    std::size_t ignored = 0;
    r.warm_s = std::min(r.warm_s, time_pass(texts, encode, ignored));
  }
  return r;
}

Options parse_args(int argc, char** argv) {
  std::map<std::string, std::string> args;
  for (int i = 1; i < argc; ++i) {
    const std::string key = argv[i];
    if (key.rfind("--", 0) != 0 || i + 1 >= argc) {
      std::cerr << "usage: tokenizer_bench [--shared DIR] [--wiki FILE] [--agnews FILE] [--bert-vocab FILE] "
                   "[--gpt2-vocab FILE] [--gpt2-merges FILE] [--repeat N] [--json FILE]\n";
      std::exit(2);
    }
    args[key.substr(2)] = argv[++i];
  }
  const char* env = std::getenv("LORA_SHARED_DIR");
  const fs::path shared = args.count("shared") ? fs::path(args["shared"]) : (env && *env ? fs::path(env) : fs::path("../shared"));
  auto path = [&](const std::string& key, const std::string& rel) {
    return args.count(key) ? fs::path(args[key]) : shared / "data" / rel;
  };
  Options o;
  o.wiki = path("wiki", "wikitext-2-raw/wiki.valid.raw");
  o.agnews = path("agnews", "agnews/test.csv");
  o.bert_vocab = path("bert-vocab", "tokenizers/bert-base-uncased/vocab.txt");
  o.gpt2_vocab = path("gpt2-vocab", "tokenizers/gpt2/vocab.json");
  o.gpt2_merges = path("gpt2-merges", "tokenizers/gpt2/merges.txt");
  if (args.count("json")) o.json = args["json"];
  if (args.count("repeat")) o.repeat = std::max(0, std::atoi(args["repeat"].c_str()));
  return o;
}

/// Cold MB/s of one tokenizer over all its rows.
double overall_cold(const std::vector<Result>& results, const std::string& tokenizer) {
  double bytes = 0, seconds = 0;
  for (const auto& r : results)
    if (r.tokenizer == tokenizer) bytes += static_cast<double>(r.bytes), seconds += r.cold_s;
  return seconds > 0 ? bytes / 1e6 / seconds : 0;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse_args(argc, argv);
  const std::vector<std::pair<std::string, std::vector<std::string>>> corpora = {
      {"wiki.valid.raw", split_lines(read_file(o.wiki))}, {"agnews test", agnews_texts(read_file(o.agnews))}};
  auto wordpiece = [&] { return text::WordPieceTokenizer(o.bert_vocab); };
  auto bpe = [&] { return text::BpeTokenizer(o.gpt2_vocab, o.gpt2_merges); };

  std::vector<Result> results;
  for (const auto& [corpus, texts] : corpora) {
    results.push_back(measure("wordpiece", corpus, texts, wordpiece, o.repeat));
    results.push_back(measure("bpe", corpus, texts, bpe, o.repeat));
  }

  std::printf("%-10s %-15s %10s %10s %12s %12s\n", "tokenizer", "corpus", "MB", "ids", "cold MB/s", "warm MB/s");
  for (const auto& r : results)
    std::printf("%-10s %-15s %10.2f %10zu %12.2f %12.2f\n", r.tokenizer.c_str(), r.corpus.c_str(), static_cast<double>(r.bytes) / 1e6, r.ids,
                r.mb_s(r.cold_s), r.mb_s(r.warm_s));
  const double wp = overall_cold(results, "wordpiece"), bp = overall_cold(results, "bpe");
  std::printf("overall (cold): wordpiece %.2f MB/s, bpe %.2f MB/s\n", wp, bp);

  if (!o.json.empty()) {
    nlohmann::json j = {{"wordpiece_mb_s", wp}, {"bpe_mb_s", bp}, {"results", nlohmann::json::array()}};
    for (const auto& r : results)
      j["results"].push_back({{"tokenizer", r.tokenizer}, {"corpus", r.corpus}, {"bytes", r.bytes}, {"ids", r.ids},
                              {"cold_mb_s", r.mb_s(r.cold_s)}, {"warm_mb_s", r.mb_s(r.warm_s)}});
    std::ofstream(o.json) << j.dump(2) << "\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "tokenizer_bench: " << e.what() << "\n";
  return 1;
}

// Derives tests/fixtures/ (the small copy of the shared fixtures committed with the tests) from
// the shared folder's fixtures/ and data/tokenizers/. Run it through scripts/make-test-fixtures.sh,
// which checks the inputs' sha256 first; tests/fixtures/README.md says what comes from where.
//
//   make_test_fixtures SHARED_DIR OUT_DIR
//
// Every reference value written here is copied from an expected.json made by HF transformers,
// PEFT or the tokenizers' reference implementations: nothing is computed by this project's code
// (this program does not use it: it reads and writes safetensors itself, JSON with nlohmann/json).
// What it does:
//   - models: keeps a few cases; keeps only the word-embedding rows of the token ids those cases
//     use, renumbered 0..n-1 in increasing order of the original id (the input ids, the config's
//     special ids and, for GPT-2, the tied output layer's logits columns follow); keeps the
//     position-embedding rows (and GPT-2's causal-mask buffers) of the positions the inputs use;
//     drops the outputs that need the whole vocabulary (loss, perplexity);
//   - tokenizers: keeps a few cases and only the vocabulary entries (and GPT-2 merges) that can
//     take part in encoding them; the reference ids stay as they are, and the fixture lists the
//     original id of each entry of the smaller vocabularies.
// The output is a function of the inputs alone: run twice, it writes the same bytes.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("cannot read " + p.string() + ": run scripts/make-test-fixtures.sh with the shared folder");
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_file(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
  out.close();
  if (!out) fail("cannot write " + p.string());
  std::cout << "  wrote " << p.string() << " (" << bytes.size() << " bytes)\n";
}

// (Not lora::read_json: this tool builds without the library, see the safetensors note below.)
json parse_json_file(const fs::path& p) { return json::parse(read_file(p)); }

// ---- safetensors, read and written here (not with lora::safetensors: the fixture must not
// depend on the code it tests) ----

struct Tensor {
  std::string name, dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
struct Safetensors {
  json metadata;                // "__metadata__", or null
  std::vector<Tensor> tensors;  // in the order of their data in the file
};

Safetensors read_safetensors(const fs::path& p) {
  const std::string file = read_file(p);
  if (file.size() < 8) fail(p.string() + ": too short for a safetensors file");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[static_cast<size_t>(i)]);
  if (n > file.size() - 8) fail(p.string() + ": header length past the end of the file");
  const json header = json::parse(file.substr(8, n));
  const std::string data = file.substr(8 + n);
  Safetensors st;
  st.metadata = header.contains("__metadata__") ? header["__metadata__"] : json();
  std::vector<std::pair<uint64_t, Tensor>> by_offset;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    const auto begin = info["data_offsets"][0].get<uint64_t>(), end = info["data_offsets"][1].get<uint64_t>();
    if (begin > end || end > data.size()) fail(p.string() + ": bad data_offsets for " + name);
    by_offset.push_back({begin, Tensor{name, info["dtype"], info["shape"].get<std::vector<int64_t>>(),
                                       data.substr(begin, end - begin)}});
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& t : by_offset) st.tensors.push_back(std::move(t.second));
  return st;
}

/// The header padded with spaces to a multiple of 8 bytes, as the safetensors writer does.
std::string safetensors_bytes(const Safetensors& st) {
  json header = json::object();
  if (!st.metadata.is_null()) header["__metadata__"] = st.metadata;
  uint64_t offset = 0;
  for (const auto& t : st.tensors) {
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  while (h.size() % 8) h += ' ';
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((h.size() >> (8 * i)) & 0xFF);
  out += h;
  for (const auto& t : st.tensors) out += t.bytes;
  return out;
}

void keep_rows(Tensor& t, const std::vector<int64_t>& rows);

/// The first `n` rows of a 2-D F32 tensor.
void keep_first_rows(Tensor& t, int64_t n) {
  std::vector<int64_t> rows(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) rows[static_cast<size_t>(i)] = i;
  keep_rows(t, rows);
}

/// The top-left n x n block of an F32 [1, 1, N, N] tensor (GPT-2's causal-mask buffers).
void keep_top_left(Tensor& t, int64_t n) {
  if (t.dtype != "F32" || t.shape.size() != 4 || t.shape[0] != 1 || t.shape[1] != 1 || t.shape[2] != t.shape[3] ||
      t.shape[2] < n)
    fail(t.name + ": expected an F32 [1, 1, N, N] tensor with N >= " + std::to_string(n));
  std::string out;
  for (int64_t r = 0; r < n; ++r) out += t.bytes.substr(static_cast<size_t>(r * t.shape[3] * 4), static_cast<size_t>(n * 4));
  t.bytes = std::move(out);
  t.shape[2] = t.shape[3] = n;
}

/// Rows `rows` of a 2-D F32 tensor, in that order.
void keep_rows(Tensor& t, const std::vector<int64_t>& rows) {
  if (t.dtype != "F32" || t.shape.size() != 2) fail(t.name + ": expected a 2-D F32 tensor");
  const size_t row_bytes = static_cast<size_t>(t.shape[1]) * 4;
  std::string out;
  for (const auto r : rows) {
    if (r < 0 || r >= t.shape[0]) fail(t.name + ": row " + std::to_string(r) + " out of range");
    out += t.bytes.substr(static_cast<size_t>(r) * row_bytes, row_bytes);
  }
  t.bytes = std::move(out);
  t.shape[0] = static_cast<int64_t>(rows.size());
}

// ---- models ----

struct ModelFixture {
  std::string name;
  std::vector<std::string> cases;        // kept, in the original order
  std::string embedding;                 // the word-embedding tensor (rows = token ids)
  std::string positions;                 // the position-embedding tensor (rows = positions)
  std::vector<std::string> config_positions;  // config.json fields that hold the number of positions
  std::string mask_buffers;              // key suffix of [1, 1, N, N] causal-mask buffers ("" for none)
  std::vector<std::string> config_ids;   // config.json fields that hold token ids
  bool logits_over_vocab;                // logits [B, T, vocab] (tied head): keep the kept ids' columns
  std::vector<std::string> copy;         // files copied unchanged
};

/// Every integer of a nested JSON list.
void collect_ints(const json& j, std::set<int64_t>& out) {
  if (j.is_array())
    for (const auto& x : j) collect_ints(x, out);
  else if (j.is_number_integer())
    out.insert(j.get<int64_t>());
}

json remap_ids(const json& j, const std::map<int64_t, int64_t>& id) {
  if (j.is_array()) {
    json out = json::array();
    for (const auto& x : j) out.push_back(remap_ids(x, id));
    return out;
  }
  return id.at(j.get<int64_t>());
}

/// logits [..., V] -> [..., columns].
json keep_columns(const json& j, const std::vector<int64_t>& columns) {
  if (j.is_array() && !j.empty() && j[0].is_array()) {
    json out = json::array();
    for (const auto& x : j) out.push_back(keep_columns(x, columns));
    return out;
  }
  json out = json::array();
  for (const auto c : columns) out.push_back(j.at(static_cast<size_t>(c)));
  return out;
}

void derive_model(const fs::path& shared, const fs::path& out_root, const ModelFixture& f) {
  const fs::path src = shared / "fixtures" / f.name, out = out_root / f.name;
  std::cout << f.name << ":\n";
  const json expected = parse_json_file(src / "expected.json");
  json config = parse_json_file(src / "config.json");
  const int64_t original_vocab = config.at("vocab_size").get<int64_t>();

  std::vector<json> cases;
  for (const auto& name : f.cases) {
    const auto it = std::find_if(expected["cases"].begin(), expected["cases"].end(),
                                 [&](const json& c) { return c["name"] == name; });
    if (it == expected["cases"].end()) fail(f.name + ": no case '" + name + "' in expected.json");
    cases.push_back(*it);
  }
  // The ids kept: those of the kept inputs and the config's special ids.
  std::set<int64_t> used;
  for (const auto& c : cases) collect_ints(c["input_ids"], used);
  for (const auto& k : f.config_ids) used.insert(config.at(k).get<int64_t>());
  const std::vector<int64_t> original_ids(used.begin(), used.end());
  // The positions kept: as many as the longest kept input (position ids are 0..T-1).
  int64_t positions = 0;
  for (const auto& c : cases) positions = std::max<int64_t>(positions, static_cast<int64_t>(c["input_ids"][0].size()));
  std::map<int64_t, int64_t> new_id;
  for (size_t k = 0; k < original_ids.size(); ++k) new_id[original_ids[k]] = static_cast<int64_t>(k);
  const auto vocab = static_cast<int64_t>(original_ids.size());

  // The checkpoint: the embedding's rows of the kept ids.
  auto st = read_safetensors(src / "model.safetensors");
  bool found = false, found_positions = false;
  for (auto& t : st.tensors) {
    if (t.name == f.positions) {
      keep_first_rows(t, positions);
      found_positions = true;
    }
    if (!f.mask_buffers.empty() && t.name.size() > f.mask_buffers.size() &&
        t.name.compare(t.name.size() - f.mask_buffers.size(), f.mask_buffers.size(), f.mask_buffers) == 0)
      keep_top_left(t, positions);
    if (t.name == f.embedding) {
      if (t.shape[0] != original_vocab) fail(f.name + ": embedding rows != vocab_size");
      keep_rows(t, original_ids);
      found = true;
    }
  }
  if (!found) fail(f.name + ": no tensor " + f.embedding);
  if (!found_positions) fail(f.name + ": no tensor " + f.positions);
  write_file(out / "model.safetensors", safetensors_bytes(st));

  config["vocab_size"] = vocab;
  for (const auto& k : f.config_ids) config[k] = new_id.at(config[k].get<int64_t>());
  for (const auto& k : f.config_positions) config[k] = positions;
  write_file(out / "config.json", config.dump(2) + "\n");

  json derived_cases = json::array();
  for (const auto& c : cases) {
    json d = {{"name", c["name"]}, {"input_ids", remap_ids(c["input_ids"], new_id)},
              {"attention_mask", c["attention_mask"]}};
    if (c.contains("last_hidden_state")) d["last_hidden_state"] = c["last_hidden_state"];
    if (f.logits_over_vocab) {
      if (c["logits"][0][0].size() != static_cast<size_t>(original_vocab))
        fail(f.name + ": logits of case " + c["name"].get<std::string>() + " are not over the whole vocabulary");
      d["logits"] = keep_columns(c["logits"], original_ids);
    } else if (c.contains("logits")) {
      d["logits"] = c["logits"];
    }
    derived_cases.push_back(d);
  }

  json e = expected;
  e.erase("cases");
  e.erase("num_parameters");
  std::vector<std::string> dropped = {"num_parameters"};
  for (const auto& [k, v] : cases[0].items())
    if (!derived_cases[0].contains(k)) dropped.push_back("cases[]." + k);
  // The checkpoint's listing: the new shapes.
  for (const char* part : {"tensors", "base"})
    if (e["checkpoint"].contains(part))
      for (const auto& t : st.tensors)
        if (e["checkpoint"][part].contains(t.name)) e["checkpoint"][part][t.name]["shape"] = t.shape;
  if (e.contains("special_tokens"))
    for (auto& [k, v] : e["special_tokens"].items())
      if (v.is_number_integer()) v = new_id.at(v.get<int64_t>());
  e["cases"] = derived_cases;
  e["derived"] = {
      {"from", "fixtures/" + f.name + " of the shared folder (sha256 in tests/fixtures/README.md)"},
      {"by", "scripts/make-test-fixtures.sh (tests/tools/make_test_fixtures.cpp)"},
      {"cases_kept", f.cases},
      {"token_ids",
       "renumbered: id k here is original_ids[k] of the original fixture. The checkpoint keeps the rows of " +
           f.embedding + " for these ids only (config vocab_size = their count); input_ids, the config's " +
           "special ids and special_tokens are renumbered. The position embeddings" +
           (f.mask_buffers.empty() ? std::string() : std::string(" and causal-mask buffers")) +
           " keep the positions the inputs use (0..T-1 for the longest input T)" +
           (f.logits_over_vocab ? std::string("; logits keep the columns of these ids, in this order "
                                              "(the output layer is tied to the embedding)")
                                : std::string("; the outputs do not depend on the vocabulary"))},
      {"original_ids", original_ids},
      {"dropped", dropped}};
  write_file(out / "expected.json", e.dump() + "\n");
  for (const auto& name : f.copy) write_file(out / name, read_file(src / name));
}

// ---- tokenizers ----

size_t code_points(const std::string& s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

/// Every substring of `s` of two code points or more, cut at code point boundaries.
void substrings(const std::string& s, std::set<std::string>& out) {
  std::vector<size_t> cuts;
  for (size_t i = 0; i <= s.size(); ++i)
    if (i == s.size() || (s[i] & 0xC0) != 0x80) cuts.push_back(i);
  for (size_t a = 0; a < cuts.size(); ++a)
    for (size_t b = a + 2; b < cuts.size(); ++b) out.insert(s.substr(cuts[a], cuts[b] - cuts[a]));
}

void derive_tokenizers(const fs::path& shared, const fs::path& out_root, const std::vector<std::string>& keep) {
  const fs::path out = out_root / "tokenizers";
  std::cout << "tokenizers:\n";
  const json expected = parse_json_file(shared / "fixtures/tokenizers/expected.json");
  json cases = json::array();
  for (const auto& name : keep) {
    const auto it = std::find_if(expected["cases"].begin(), expected["cases"].end(),
                                 [&](const json& c) { return c["name"] == name; });
    if (it == expected["cases"].end()) fail("tokenizers: no case '" + name + "'");
    cases.push_back(*it);
  }

  // WordPiece: the tokens of the reference ids and the special tokens. Greedy longest-match
  // WordPiece then encodes these cases exactly as with the whole vocabulary: each piece it picks
  // with the whole vocabulary is kept, no longer match was there to be found, and a word that
  // became [UNK] still finds no way through.
  std::vector<std::string> bert;
  {
    std::istringstream in(read_file(shared / "data/tokenizers/bert-base-uncased/vocab.txt"));
    for (std::string line; std::getline(in, line);) bert.push_back(line);
  }
  std::set<int64_t> bert_ids;
  for (const auto& c : cases) collect_ints(c["bert_ids"], bert_ids);
  for (size_t id = 0; id < bert.size(); ++id)
    for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
      if (bert[id] == s) bert_ids.insert(static_cast<int64_t>(id));
  std::string bert_txt;
  for (const auto id : bert_ids) bert_txt += bert.at(static_cast<size_t>(id)) + "\n";
  write_file(out / "bert-vocab.txt", bert_txt);

  // GPT-2 BPE: the tokens of the reference ids; every merge whose result is part of one of them
  // (each merge applied while encoding these cases is, so it is kept, and keeping others beside
  // it changes nothing: the lowest-ranked applicable merge is the same one); the parts and
  // results of those merges, the 256 byte tokens and <|endoftext|>. Merges keep their order.
  const json vocab = parse_json_file(shared / "data/tokenizers/gpt2/vocab.json");
  std::map<int64_t, std::string> token_of;
  for (const auto& [token, id] : vocab.items()) token_of[id.get<int64_t>()] = token;
  std::set<int64_t> final_ids;
  for (const auto& c : cases) collect_ints(c["gpt2_ids"], final_ids);
  std::set<std::string> parts;
  for (const auto id : final_ids) substrings(token_of.at(id), parts);
  std::set<std::string> kept_tokens;
  for (const auto id : final_ids) kept_tokens.insert(token_of.at(id));
  for (const auto& [token, id] : vocab.items())
    if (code_points(token) == 1 || token == "<|endoftext|>") kept_tokens.insert(token);
  std::string merges_txt;
  {
    std::istringstream in(read_file(shared / "data/tokenizers/gpt2/merges.txt"));
    std::string line;
    std::getline(in, line);
    if (line.rfind("#version", 0) != 0) fail("merges.txt: no #version line");
    merges_txt = line + "\n";
    while (std::getline(in, line)) {
      const auto space = line.find(' ');
      if (space == std::string::npos) continue;
      const std::string a = line.substr(0, space), b = line.substr(space + 1);
      if (!parts.count(a + b)) continue;
      merges_txt += line + "\n";
      kept_tokens.insert(a);
      kept_tokens.insert(b);
      kept_tokens.insert(a + b);
    }
  }
  std::vector<int64_t> gpt2_ids;
  for (const auto& t : kept_tokens) gpt2_ids.push_back(vocab.at(t).get<int64_t>());
  std::sort(gpt2_ids.begin(), gpt2_ids.end());
  json small_vocab = json::object();
  for (size_t k = 0; k < gpt2_ids.size(); ++k) small_vocab[token_of.at(gpt2_ids[k])] = k;
  write_file(out / "gpt2-vocab.json", small_vocab.dump() + "\n");
  write_file(out / "gpt2-merges.txt", merges_txt);

  json e = expected;
  e.erase("cases");
  e["cases"] = cases;
  e["cases_kept"] = cases.size();
  e["derived"] = {
      {"from", "fixtures/tokenizers and data/tokenizers of the shared folder (sha256 in tests/fixtures/README.md)"},
      {"by", "scripts/make-test-fixtures.sh (tests/tools/make_test_fixtures.cpp)"},
      {"cases_kept", keep},
      {"vocabularies",
       "bert-vocab.txt, gpt2-vocab.json and gpt2-merges.txt are the files of vocab_files reduced to what these "
       "cases can use (see the tool); the reference ids are unchanged. Entry k of bert-vocab.txt (its line k) "
       "is id bert_original_ids[k] of the whole vocabulary, id k of gpt2-vocab.json is gpt2_original_ids[k]"},
      {"bert_original_ids", std::vector<int64_t>(bert_ids.begin(), bert_ids.end())},
      {"gpt2_original_ids", gpt2_ids}};
  write_file(out / "expected.json", e.dump() + "\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: make_test_fixtures SHARED_DIR OUT_DIR (see scripts/make-test-fixtures.sh)\n";
    return 2;
  }
  try {
    const fs::path shared = argv[1], out = argv[2];
    derive_model(shared, out,
                 {"distilbert_seqcls_tiny",
                  {"padded_batch"},
                  "distilbert.embeddings.word_embeddings.weight",
                  "distilbert.embeddings.position_embeddings.weight",
                  {"max_position_embeddings"},
                  "",
                  {"pad_token_id"},
                  false,
                  {}});
    derive_model(shared, out,
                 {"gpt2_hub_layout_tiny",
                  {"right_padded"},
                  "wte.weight",
                  "wpe.weight",
                  {"n_positions", "n_ctx"},
                  ".attn.bias",
                  {"bos_token_id", "eos_token_id"},
                  true,
                  {}});
    derive_model(shared, out,
                 {"gpt2_lora_adapter_tiny",
                  {"right_padded"},
                  "wte.weight",
                  "wpe.weight",
                  {"n_positions", "n_ctx"},
                  ".attn.bias",
                  {"bos_token_id", "eos_token_id"},
                  true,
                  {"adapter_config.json", "adapter_model.safetensors"}});
    // One WikiText line and the edge cases but three (mixed scripts, a URL, leading and trailing
    // spaces: their parts are in the others), for size.
    derive_tokenizers(shared, out,
                      {"wiki_valid_line0002", "edge_accents", "edge_cjk", "edge_cjk_mixed", "edge_emoji",
                       "edge_numbers", "edge_contractions", "edge_whitespace_runs", "edge_control_chars",
                       "edge_combining_marks", "edge_long_word_150", "edge_punctuation_runs", "edge_currency",
                       "edge_arabic", "edge_devanagari", "edge_zero_width_joiner", "edge_unicode_quotes",
                       "edge_nbsp_and_unicode_spaces", "edge_empty", "edge_whitespace_only"});
  } catch (const std::exception& e) {
    std::cerr << "make_test_fixtures: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

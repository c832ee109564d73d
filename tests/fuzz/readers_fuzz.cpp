// libFuzzer harnesses for the example programs' readers of outside input other than model files
// (model_files_fuzz.cpp): the tokenizers' files (vocab.txt; vocab.json + merges.txt), WordPiece
// and BPE encoding of arbitrary bytes (invalid UTF-8 included), the AG-News CSV reader, the
// WikiText reader and a sweep's point files (read by the engine's own load_done()). One harness
// per executable: compile with -DLORA_FUZZ_TARGET=<n> (see CMakeLists.txt for the numbers and names). Each executable run
// with LORA_FUZZ_SEEDS=DIR writes its seed corpus to DIR/<name>/ and its dictionary to
// DIR/<name>.dict, then exits. See fuzz_support.hpp for what counts as a bug, and
// docs/fuzzing.md.
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

#define LORA_FUZZ_VOCAB_TXT 1
#define LORA_FUZZ_WORDPIECE_ENCODE 2
#define LORA_FUZZ_BPE_FILES 3
#define LORA_FUZZ_BPE_ENCODE 4
#define LORA_FUZZ_AGNEWS_CSV 5
#define LORA_FUZZ_WIKITEXT 6
#define LORA_FUZZ_SWEEP_POINT 7

// Each harness includes only its reader (agnews.hpp brings in LibTorch's headers).
#if LORA_FUZZ_TARGET == LORA_FUZZ_VOCAB_TXT || LORA_FUZZ_TARGET == LORA_FUZZ_WORDPIECE_ENCODE
#include "text/wordpiece.hpp"
#elif LORA_FUZZ_TARGET == LORA_FUZZ_BPE_FILES || LORA_FUZZ_TARGET == LORA_FUZZ_BPE_ENCODE
#include "text/bpe.hpp"
#elif LORA_FUZZ_TARGET == LORA_FUZZ_AGNEWS_CSV
#include "data/agnews.hpp"
#elif LORA_FUZZ_TARGET == LORA_FUZZ_WIKITEXT
#include "data/wikitext.hpp"
#elif LORA_FUZZ_TARGET == LORA_FUZZ_SWEEP_POINT
#include "sweep/point.hpp"
#else
#error "LORA_FUZZ_TARGET must be 1..7 (see CMakeLists.txt)"
#endif

namespace {

// ---- small tokenizer files, for seeds and for the encoders when no shared data is given ----

/// A WordPiece vocabulary with the five special tokens and a few pieces.
std::string small_vocab_txt() {
  std::string v;
  for (const char* t : {"[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "hello", "world", "un",
                        "##aff", "##able", "##s", "##ing", ",", "!", ".", "'", "a", "b", "c", "##a", "##b", "##c",
                        "cafe", "你", "好"})
    v += std::string(t) + "\n";
  return v;
}

/// GPT-2's byte -> printable code point table (bytes_to_unicode in encoder.py), as UTF-8.
std::vector<std::string> byte_alphabet() {
  std::vector<std::string> out(256);
  auto utf8 = [](unsigned cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  unsigned n = 0;
  for (unsigned b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    out[b] = utf8(printable ? b : 256 + n++);
  }
  return out;
}

/// A GPT-2 vocab.json (every byte, a few merged tokens, <|endoftext|>) and its merges.txt.
std::pair<std::string, std::string> small_bpe_files() {
  const auto alpha = byte_alphabet();
  nlohmann::ordered_json vocab = nlohmann::ordered_json::object();
  for (unsigned b = 0; b < 256; ++b) vocab[alpha[b]] = b;
  const std::string sp = alpha[' '];
  const std::vector<std::pair<std::string, std::string>> merges = {
      {sp, "t"}, {"h", "e"}, {sp + "t", "he"}, {"i", "n"}, {"e", "r"}, {sp, "a"}, {"o", "n"}, {"l", "l"}, {"he", "ll"}};
  std::string merges_txt = "#version: 0.2\n";
  int id = 256;
  for (const auto& [a, b] : merges) {
    merges_txt += a + " " + b + "\n";
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
  }
  vocab["<|endoftext|>"] = id;
  return {vocab.dump(), merges_txt};
}

const std::string kMergesSeparator = "\n=== merges.txt ===\n";

// ---- the harnesses ----

#if LORA_FUZZ_TARGET == LORA_FUZZ_VOCAB_TXT
const char* const kName = "vocab_txt";
void write_seeds(const fuzz::fs::path& dir) {
  fuzz::write_seeds(dir, kName, {{"small.txt", small_vocab_txt()}, {"crlf.txt", "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\n[MASK]\r\n##x\r\n"}},
                    {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "##", "\n", "\r\n", "\xC3\xA9", "\xE4\xBD\xA0", "\xFF"});
}
void one_input(const std::string& in) {
  const auto path = fuzz::write_file("vocab.txt", in);
  try {
    const text::WordPieceTokenizer tok(path);
    const auto ids = tok.encode("Hello, un-affable WORLD! caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD [SEP] \xFF x");
    for (auto id : ids) fuzz::expect(id >= 0 && static_cast<size_t>(id) < tok.vocab_size(), "id outside the vocabulary");
    (void)tok.decode(ids);
  } catch (const examples::Error& e) {
    fuzz::rejected(e, {path});
  }
}
#endif

#if LORA_FUZZ_TARGET == LORA_FUZZ_WORDPIECE_ENCODE
const char* const kName = "wordpiece_encode";
void write_seeds(const fuzz::fs::path& dir) {
  fuzz::write_seeds(dir, kName,
                    {{"ascii", std::string("\x00", 1) + "Hello, world! The unaffable cafe."},
                     {"unicode", std::string("\x05", 1) + "Caf\xC3\xA9 na\xC3\xAFve \xE4\xBD\xA0\xE5\xA5\xBD \xE2\x80\xA8 x\tz\r\n"},
                     {"invalid", std::string("\x01", 1) + "ab\xFF\xFE" "cd\xC3\x28\xE2\x82\xF0\x9F\x98 \xED\xA0\x80"},
                     {"long", std::string("\x00", 1) + std::string(150, 'a') + " " + std::string(40, 'b')}},
                    {"[UNK]", "[CLS]", "##", " ", "\xC3\xA9", "\xE4\xBD\xA0", "\xE2\x80\xA8", "\xEF\xBF\xBD", "\xF0\x9F\x98\x80",
                     "\xCC\x81", std::string(1, '\0'), "\xFF"});
}
const text::WordPieceTokenizer& tokenizer() {
  static const text::WordPieceTokenizer tok = [] {
    auto shared = fuzz::shared_file("data/tokenizers/bert-base-uncased/vocab.txt");
    return text::WordPieceTokenizer(shared.empty() ? fuzz::write_file("vocab.txt", small_vocab_txt()) : shared);
  }();
  return tok;
}
void one_input(const std::string& in) {
  if (in.empty()) return;
  const auto& tok = tokenizer();
  const unsigned mode = static_cast<unsigned char>(in[0]);
  const std::string text = in.substr(1);
  const bool special = (mode & 1) == 0;
  const size_t max_length = (mode >> 1) % 8 == 0 ? 0 : 2 + (mode >> 1) % 32;
  std::vector<std::int64_t> ids;
  try {
    ids = tok.encode(text, special, max_length);
    (void)tok.tokenize(text);
    (void)tok.decode(ids);
  } catch (const std::exception& e) {
    fuzz::bug(std::string("encoding threw: ") + e.what());
  }
  for (auto id : ids) fuzz::expect(id >= 0 && static_cast<size_t>(id) < tok.vocab_size(), "id outside the vocabulary");
  if (max_length > 0) fuzz::expect(ids.size() <= max_length, "more ids than max_length");
  if (special) {
    fuzz::expect(ids.size() >= 2, "no [CLS] / [SEP]");
    fuzz::expect(ids.front() == tok.cls_id() && ids.back() == tok.sep_id(), "[CLS] ... [SEP] missing");
  }
}
#endif

#if LORA_FUZZ_TARGET == LORA_FUZZ_BPE_FILES
const char* const kName = "bpe_files";
void write_seeds(const fuzz::fs::path& dir) {
  const auto [vocab, merges] = small_bpe_files();
  fuzz::write_seeds(dir, kName, {{"small", vocab + kMergesSeparator + merges}, {"no_merges", vocab + kMergesSeparator + "#version: 0.2\n"}},
                    {kMergesSeparator, "#version: 0.2\n", "\"<|endoftext|>\"", "\"\\u0120\"", "\\u0120", "\xC4\xA0", "\":", ",",
                     "{", "}", "-1", "4294967296", "1e3", "null"});
}
void one_input(const std::string& in) {
  const auto [vocab, merges] = fuzz::split(in, kMergesSeparator);
  const auto vocab_path = fuzz::write_file("vocab.json", vocab), merges_path = fuzz::write_file("merges.txt", merges);
  try {
    const text::BpeTokenizer tok(vocab_path, merges_path);
    const std::string sample = "Hello there, the world's 123 caf\xC3\xA9 \xFF\xFE <|endoftext|>\n\n  x";
    const auto ids = tok.encode(sample);
    for (auto id : ids) fuzz::expect(id >= 0 && static_cast<size_t>(id) < tok.vocab_size(), "id outside the vocabulary");
    fuzz::expect(tok.decode(ids) == sample, "decode(encode(x)) != x with a vocabulary the loader accepted");
    fuzz::expect(tok.eos_id() >= 0 && static_cast<size_t>(tok.eos_id()) < tok.vocab_size(), "eos id outside the vocabulary");
  } catch (const examples::Error& e) {
    fuzz::rejected(e, {vocab_path, merges_path});
  }
}
#endif

#if LORA_FUZZ_TARGET == LORA_FUZZ_BPE_ENCODE
const char* const kName = "bpe_encode";
void write_seeds(const fuzz::fs::path& dir) {
  fuzz::write_seeds(dir, kName,
                    {{"ascii", "Hello there, the world's 123 tests.\n\n  x  "},
                     {"unicode", "Caf\xC3\xA9 na\xC3\xAFve \xE4\xBD\xA0\xE5\xA5\xBD \xE2\x80\xA8 \xF0\x9F\x98\x80 x\tz\r\n"},
                     {"invalid", "ab\xFF\xFE" "cd\xC3\x28\xE2\x82\xF0\x9F\x98 \xED\xA0\x80 it's"},
                     {"wiki", " = Valkyria Chronicles III = \n Senj\xC5\x8D no Valkyria 3 : Unrecorded Chronicles \n"}},
                    {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d", " ", "\n", "\xC2\xA0", "\xE2\x80\xA8", "\xE3\x80\x80",
                     "<|endoftext|>", "\xFF", "\xC3", "\xF0\x9F"});
}
const text::BpeTokenizer& tokenizer() {
  static const text::BpeTokenizer tok = [] {
    const auto vocab = fuzz::shared_file("data/tokenizers/gpt2/vocab.json");
    const auto merges = fuzz::shared_file("data/tokenizers/gpt2/merges.txt");
    if (!vocab.empty() && !merges.empty()) return text::BpeTokenizer(vocab, merges);
    const auto [v, m] = small_bpe_files();
    return text::BpeTokenizer(fuzz::write_file("vocab.json", v), fuzz::write_file("merges.txt", m));
  }();
  return tok;
}
void one_input(const std::string& in) {
  const auto& tok = tokenizer();
  std::vector<std::int64_t> ids;
  std::string pieces;
  try {
    ids = tok.encode(in);
    for (const auto& p : text::BpeTokenizer::pre_tokenize(in)) {
      fuzz::expect(!p.empty(), "empty pre-token");
      pieces += p;
    }
    fuzz::expect(tok.decode(ids) == in, "decode(encode(x)) != x");
  } catch (const std::exception& e) {
    fuzz::bug(std::string("encoding threw: ") + e.what());
  }
  fuzz::expect(pieces == in, "the pre-tokens do not cover the text");
  for (auto id : ids) fuzz::expect(id >= 0 && static_cast<size_t>(id) < tok.vocab_size(), "id outside the vocabulary");
}
#endif

#if LORA_FUZZ_TARGET == LORA_FUZZ_AGNEWS_CSV
const char* const kName = "agnews_csv";
void write_seeds(const fuzz::fs::path& dir) {
  std::vector<std::pair<std::string, std::string>> seeds = {
      {"small.csv", "\"3\",\"Wall St. Bears\",\"Reuters - Short-sellers, \"\"the\"\" ultra-cynics.\"\n"
                    "\"4\",\"Title\",\" desc with \\$ and #39; \"\n\"1\",\"a\",\"multi\nline\"\r\n"},
      {"bom.csv", "\xEF\xBB\xBF\"2\",\"x\",\"y\"\n\n"},
      {"plain.csv", "1,a,b\n2,c,d"}};
  if (const auto real = fuzz::shared_file("data/agnews/test.csv"); !real.empty()) {
    const auto text = fuzz::read_all(real);
    size_t end = 0;
    for (int i = 0; i < 20 && end != std::string::npos; ++i) end = text.find('\n', end + 1);
    seeds.emplace_back("head20.csv", text.substr(0, end == std::string::npos ? text.size() : end + 1));
  }
  fuzz::write_seeds(dir, kName, seeds, {"\"", "\"\"", ",", "\n", "\r\n", "\r", "\"1\",", "\"4\"", "\xEF\xBB\xBF", "#39;"});
}
void one_input(const std::string& in) {
  const auto path = fuzz::write_file("agnews.csv", in);
  try {
    const auto rows = data::read_agnews(path);
    // The shortest row is "1,," and a line break: k rows take at least 4k - 1 bytes.
    fuzz::expect(rows.size() <= (in.size() + 1) / 4, "more rows than the bytes allow");
    for (const auto& r : rows) fuzz::expect(r.label >= 0 && r.label < 4, "label outside 0..3");
  } catch (const examples::Error& e) {
    fuzz::rejected(e, {path});
  }
}
#endif

#if LORA_FUZZ_TARGET == LORA_FUZZ_WIKITEXT
const char* const kName = "wikitext";
void write_seeds(const fuzz::fs::path& dir) {
  std::vector<std::pair<std::string, std::string>> seeds = {
      {"small.raw", std::string("\x05", 1) + " \n = Title = \n \n Some text , with @-@ tokens . \n \n = = Section = = \n Last"},
      {"blank.raw", std::string("\x00", 1) + " \n\t\n\r\n"}};
  if (const auto real = fuzz::shared_file("data/wikitext-2-raw/wiki.valid.raw"); !real.empty())
    seeds.emplace_back("head.raw", "\x03" + fuzz::read_all(real).substr(0, 2000));
  fuzz::write_seeds(dir, kName, seeds, {" \n", " = ", " = = ", " @-@ ", "\r\n", "\t"});
}
void one_input(const std::string& in) {
  if (in.empty()) return;
  const std::int64_t block = static_cast<unsigned char>(in[0]) % 40;  // 0 and 1 must be rejected
  const auto path = fuzz::write_file("wiki.raw", in.substr(1));
  // A byte tokenizer: one id per byte, so that the token count is known.
  const data::Tokenize bytes = [](const std::string& s) {
    std::vector<std::int64_t> ids;
    for (unsigned char c : s) ids.push_back(c);
    return ids;
  };
  try {
    const auto split = data::load_wikitext(path, bytes, block);
    fuzz::expect(block >= 2, "a block size below 2 was accepted");
    std::int64_t total = 0;
    for (const auto& b : split.blocks) {
      fuzz::expect(!b.empty() && static_cast<std::int64_t>(b.size()) <= block, "a block of a wrong size");
      total += static_cast<std::int64_t>(b.size());
    }
    fuzz::expect(total == split.tokens, "the blocks do not hold the token stream");
    fuzz::expect(split.predicted == split.tokens - static_cast<std::int64_t>(split.blocks.size()), "wrong target count");
    fuzz::expect(split.lines > 0, "no lines, no error");
  } catch (const examples::DataError& e) {
    fuzz::expect(block < 2, std::string("a DataError for block size ") + std::to_string(block) + ": " + e.what());
  } catch (const examples::Error& e) {
    fuzz::rejected(e, {path});
  }
}
#endif

#if LORA_FUZZ_TARGET == LORA_FUZZ_SWEEP_POINT
const char* const kName = "sweep_point";
/// A task with an identity and a metric; the harness never trains.
class NoTrainingTask : public sweep::Task {
 public:
  std::string name() const override { return "fuzz"; }
  std::string model_name() const override { return "none"; }
  sweep::Metric metric() const override { return {}; }
  int64_t steps_per_epoch() const override { return 1; }
  sweep::Model make_model(const sweep::Point&) override { fuzz::bug("load_done() built a model"); }
  std::vector<sweep::Batch> train_batches(int64_t, const sweep::Point&) override {
    fuzz::bug("load_done() asked for batches");
  }
};
/// The options of the harness's sweep: its --out is the harness's work folder.
const sweep::Options& options() {
  static const sweep::Options o = [] {
    sweep::Options o;
    o.scaling = "alpha-over-rank";
    o.init = "uniform-zero";
    o.targets = {"q_lin", "v_lin"};
    o.loraplus_ratio = 1;
    o.epochs = 2;
    o.batch_size = 32;
    o.train_size = 2000;
    o.val_size = 1000;
    o.max_len = 128;
    o.out = fuzz::work_dir().string();
    fuzz::fs::create_directories(sweep::detail::points_dir(o));
    return o;
  }();
  return o;
}
/// The harness's two points, a LoRA one and a FullFT one: each input is read as the point file
/// of both.
std::vector<sweep::Point> points() {
  sweep::Point lora;
  lora.lr = 1e-3;
  lora.rank = 2;
  lora.alpha = 32;
  lora.scaling = "alpha-over-rank";
  lora.init = "uniform-zero";
  lora.seed = 42;
  lora.extra = {{"train_file", "train.csv"}};
  sweep::Point full = lora;
  full.method = "full";
  full.rank = 0;
  full.alpha = 0;
  full.scaling = full.init = "";
  return {lora, full};
}
/// Seeds: the two points' files as the engine writes them, one finished and one diverged.
void write_seeds(const fuzz::fs::path& dir) {
  NoTrainingTask task;
  const auto ps = points();
  // The file of point p as the engine writes it: the settings of what point_run() gives.
  const auto document = [&](const sweep::Point& p, const nlohmann::json& results) {
    return sweep::detail::point_document(options(), task, p, sweep::point_run(options(), p), results);
  };
  const nlohmann::json done = {{"best_val_loss", 1.2}, {"test_acc", 53.1}, {"train_losses", {1.4, 1.3}},
                               {"val_losses", {1.3, 1.2}}, {"train_curve", {{"every", 5}, {"step", {5, 10}}, {"loss", {1.5, 1.4}}}},
                               {"diverged", false}, {"diverged_reason", nullptr}, {"steps", 126},
                               {"trainable_parameters", 1234}, {"wall_time_s", 3.5}};
  nlohmann::json diverged = done;
  diverged["diverged"] = true;
  diverged["diverged_reason"] = "loss is nan at step 3";
  diverged["test_acc"] = nullptr;
  fuzz::write_seeds(dir, kName,
                    {{"lora.json", document(ps[0], done).dump(2)}, {"full.json", document(ps[1], diverged).dump()}},
                    {"\"key\"", "\"settings\"", "\"results\"", "\"method\"", "\"rank\"", "\"lr\"", "\"seed\"", "\"diverged\"",
                     "\"test_acc\"", "\"best_val_loss\"", "\"full\"", "\"lora\"", "null", "true", "false", "-1", "1e308",
                     "18446744073709551615", "NaN"});
}
/// What a rerun does with an input found as a point's file (sweep::detail::load_done, the
/// engine's own reader): a record of that point, or an error naming the file.
void one_input(const std::string& in) {
  static NoTrainingTask task;
  static const auto ps = points();
  for (const auto& p : ps) {
    const auto path = fuzz::write_to(sweep::detail::point_path(options(), p), in);
    try {
      const auto rec = sweep::detail::load_done(options(), task, p);
      fuzz::expect(rec.has_value(), "an existing point file was read as absent");
      fuzz::expect(rec->key == sweep::key(p), "a point file of another key was accepted: " + rec->key);
      fuzz::expect(rec->column == sweep::column(p) && rec->lr == p.lr && rec->seed == p.seed,
                   "the record does not describe the point");
    } catch (const examples::Error& e) {
      fuzz::rejected(e, {path});
    }
  }
}
#endif

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = fuzz::seeds_dir()) {
    write_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  one_input(fuzz::bytes(data, size));
  return 0;
}

// The example tokenizers (examples/common/text/): WordPiece and GPT-2 BPE against reference ids
// from independent implementations (fixtures/tokenizers/expected.json), BPE round trips over
// WikiText-2, invalid UTF-8, BERT's normalisation steps one by one, and loading errors.
#include "support.hpp"

#include "errors.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "text/bpe.hpp"
#include "text/unicode.hpp"
#include "text/wordpiece.hpp"

namespace {

namespace fs = std::filesystem;
using text::BpeTokenizer;
using text::Padding;
using text::WordPieceTokenizer;
using Ids = std::vector<std::int64_t>;
using Tokens = std::vector<std::string>;

fs::path bert_vocab() { return lora_test::data("tokenizers/bert-base-uncased/vocab.txt"); }
fs::path gpt2_vocab() { return lora_test::data("tokenizers/gpt2/vocab.json"); }
fs::path gpt2_merges() { return lora_test::data("tokenizers/gpt2/merges.txt"); }
fs::path expected_json() { return lora_test::fixture("tokenizers/expected.json"); }

/// Loaded once for the whole run (call only after LORA_REQUIRE_PATH on the files).
const WordPieceTokenizer& wordpiece() {
  static const WordPieceTokenizer tok(bert_vocab());
  return tok;
}
const BpeTokenizer& bpe() {
  static const BpeTokenizer tok(gpt2_vocab(), gpt2_merges());
  return tok;
}

std::string show(const Ids& ids) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < ids.size(); ++i) s << (i ? ", " : "") << ids[i];
  return s.str() + "]";
}

/// Compares `encode(case.text)` with case[field] for every case; returns how many differ and
/// describes the first difference in `first`.
template <typename Encode>
int count_mismatches(const nlohmann::json& cases, const char* field, Encode&& encode, std::string& first) {
  int bad = 0;
  for (const auto& c : cases) {
    const auto text = c.at("text").get<std::string>();
    const Ids got = encode(text), want = c.at(field).get<Ids>();
    if (got != want && bad++ == 0)
      first = c.at("name").get<std::string>() + ": text " + nlohmann::json(text).dump() + "\n  got      " + show(got) +
              "\n  expected " + show(want);
  }
  return bad;
}

/// Whether every id is in [0, size).
bool all_below(const Ids& ids, std::size_t size) {
  for (auto id : ids)
    if (id < 0 || static_cast<std::size_t>(id) >= size) return false;
  return true;
}

/// Deterministic random byte strings (mostly invalid UTF-8), with some valid text mixed in.
std::vector<std::string> random_byte_strings(int count) {
  std::mt19937 rng(1234);
  const std::vector<std::string> parts = {"a", " ", "'s", "\xC3\xA9", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80", "\n", "!", "7"};
  std::vector<std::string> out;
  for (int k = 0; k < count; ++k) {
    std::string s;
    const int n = static_cast<int>(rng() % 48);
    for (int i = 0; i < n; ++i) s += (rng() % 2) ? std::string(1, static_cast<char>(rng() % 256)) : parts[rng() % parts.size()];
    out.push_back(s);
  }
  return out;
}

}  // namespace

TEST_CASE("WordPiece matches the reference ids of every fixture case", "[tokenizers]") {
  LORA_REQUIRE_PATH(bert_vocab());
  LORA_REQUIRE_PATH(expected_json());
  const auto fixture = lora::read_json<nlohmann::json>(expected_json());
  const auto& special = fixture.at("special_ids");
  CHECK(wordpiece().pad_id() == special.at("bert_pad").get<std::int64_t>());
  CHECK(wordpiece().unk_id() == special.at("bert_unk").get<std::int64_t>());
  CHECK(wordpiece().cls_id() == special.at("bert_cls").get<std::int64_t>());
  CHECK(wordpiece().sep_id() == special.at("bert_sep").get<std::int64_t>());
  CHECK(wordpiece().mask_id() == special.at("bert_mask").get<std::int64_t>());
  CHECK(wordpiece().vocab_size() == 30522);

  const auto& cases = fixture.at("cases");
  REQUIRE(cases.size() == 62);
  std::string first;
  const int bad = count_mismatches(cases, "bert_ids", [](const std::string& t) { return wordpiece().encode(t); }, first);
  INFO("first mismatch: " << first);
  CHECK(bad == 0);
}

TEST_CASE("GPT-2 BPE matches the reference ids of every fixture case and decodes back", "[tokenizers]") {
  LORA_REQUIRE_PATH(gpt2_vocab());
  LORA_REQUIRE_PATH(gpt2_merges());
  LORA_REQUIRE_PATH(expected_json());
  const auto fixture = lora::read_json<nlohmann::json>(expected_json());
  CHECK(bpe().eos_id() == fixture.at("special_ids").at("gpt2_eos").get<std::int64_t>());
  CHECK(bpe().vocab_size() == 50257);

  const auto& cases = fixture.at("cases");
  REQUIRE(cases.size() == 62);
  std::string first;
  const int bad = count_mismatches(cases, "gpt2_ids", [](const std::string& t) { return bpe().encode(t); }, first);
  {
    INFO("first mismatch: " << first);
    CHECK(bad == 0);
  }
  for (const auto& c : cases) {
    const auto text = c.at("text").get<std::string>();
    INFO(c.at("name").get<std::string>());
    CHECK(bpe().decode(c.at("gpt2_ids").get<Ids>()) == text);
  }
}

namespace {

/// `ids` of a cut-down vocabulary as ids of the whole one (original[id]; -1 outside it).
Ids to_original(Ids ids, const Ids& original) {
  for (auto& id : ids) id = id >= 0 && static_cast<std::size_t>(id) < original.size() ? original[static_cast<std::size_t>(id)] : -1;
  return ids;
}

/// The committed subset of the fixture (tests/fixtures/tokenizers): its cases, whose reference ids
/// are those of the whole vocabularies, and the cut-down vocabulary files beside them.
nlohmann::json committed_tokenizer_fixture() {
  auto fixture = lora::read_json<nlohmann::json>(lora_test::committed_fixture("tokenizers") / "expected.json");
  REQUIRE(fixture.at("cases").size() == fixture.at("derived").at("cases_kept").size());
  REQUIRE(fixture.at("cases").size() >= 15);
  return fixture;
}

}  // namespace

TEST_CASE("WordPiece matches the reference ids of the committed subset (tests/fixtures, no shared data needed)",
          "[tokenizers][committed]") {
  const auto fixture = committed_tokenizer_fixture();
  const auto original = fixture.at("derived").at("bert_original_ids").get<Ids>();
  const WordPieceTokenizer tok(lora_test::committed_fixture("tokenizers") / "bert-vocab.txt");
  REQUIRE(tok.vocab_size() == original.size());
  const auto special = [&](const char* name) { return fixture.at("special_ids").at(name).get<std::int64_t>(); };
  CHECK(to_original({tok.pad_id(), tok.unk_id(), tok.cls_id(), tok.sep_id(), tok.mask_id()}, original) ==
        Ids{special("bert_pad"), special("bert_unk"), special("bert_cls"), special("bert_sep"), special("bert_mask")});
  std::string first;
  const int bad = count_mismatches(
      fixture.at("cases"), "bert_ids", [&](const std::string& t) { return to_original(tok.encode(t), original); },
      first);
  INFO("first mismatch: " << first);
  CHECK(bad == 0);
}

TEST_CASE("GPT-2 BPE matches the reference ids of the committed subset (tests/fixtures, no shared data needed)",
          "[tokenizers][committed]") {
  const auto fixture = committed_tokenizer_fixture();
  const auto original = fixture.at("derived").at("gpt2_original_ids").get<Ids>();
  const auto dir = lora_test::committed_fixture("tokenizers");
  const BpeTokenizer tok(dir / "gpt2-vocab.json", dir / "gpt2-merges.txt");
  REQUIRE(tok.vocab_size() == original.size());
  CHECK(to_original({tok.eos_id()}, original) == Ids{fixture.at("special_ids").at("gpt2_eos").get<std::int64_t>()});
  std::string first;
  const int bad = count_mismatches(
      fixture.at("cases"), "gpt2_ids", [&](const std::string& t) { return to_original(tok.encode(t), original); },
      first);
  {
    INFO("first mismatch: " << first);
    CHECK(bad == 0);
  }
  std::map<std::int64_t, std::int64_t> small_id;
  for (std::size_t k = 0; k < original.size(); ++k) small_id[original[k]] = static_cast<std::int64_t>(k);
  for (const auto& c : fixture.at("cases")) {
    INFO(c.at("name").get<std::string>());
    Ids ids;
    for (const auto id : c.at("gpt2_ids").get<Ids>()) {
      REQUIRE(small_id.count(id));  // the cut-down vocabulary holds every reference token
      ids.push_back(small_id[id]);
    }
    CHECK(tok.decode(ids) == c.at("text").get<std::string>());
  }
}

TEST_CASE("GPT-2 BPE decode(encode(x)) == x over WikiText-2 valid", "[tokenizers]") {
  LORA_REQUIRE_PATH(gpt2_vocab());
  LORA_REQUIRE_PATH(gpt2_merges());
  const auto wiki = lora_test::data("wikitext-2-raw/wiki.valid.raw");
  LORA_REQUIRE_PATH(wiki);
  const std::string text = lora_test::read_text(wiki);
  REQUIRE(text.size() == 1146846);  // shared/data/README.md: 1,146,846 bytes, 3,760 lines

  SECTION("every line") {
    std::istringstream in(text);
    int lines = 0, bad = 0;
    std::string first_bad;
    for (std::string line; std::getline(in, line); ++lines) {
      if (bpe().decode(bpe().encode(line)) != line && bad++ == 0) first_bad = line;
    }
    INFO("first line that does not round-trip: " << first_bad);
    CHECK(lines == 3760);
    CHECK(bad == 0);
  }
  SECTION("the whole file at once") {
    const Ids ids = bpe().encode(text);
    CHECK(ids.size() > 200000);
    CHECK(bpe().decode(ids) == text);
  }
}

TEST_CASE("Both tokenizers give the same ids when shared by several threads", "[tokenizers]") {
  LORA_REQUIRE_PATH(bert_vocab());
  LORA_REQUIRE_PATH(gpt2_vocab());
  LORA_REQUIRE_PATH(gpt2_merges());
  const auto wiki = lora_test::data("wikitext-2-raw/wiki.valid.raw");
  LORA_REQUIRE_PATH(wiki);
  std::vector<std::string> lines;
  std::istringstream in(lora_test::read_text(wiki));
  for (std::string line; std::getline(in, line) && lines.size() < 2000;) lines.push_back(line);
  const BpeTokenizer fresh(gpt2_vocab(), gpt2_merges());  // its own, empty cache
  std::vector<Ids> want_bpe, want_wp;
  for (const auto& l : lines) want_bpe.push_back(bpe().encode(l)), want_wp.push_back(wordpiece().encode(l));

  std::vector<int> bad(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (std::size_t k = 0; k < lines.size(); ++k) {
        const std::size_t i = (k * 7 + static_cast<std::size_t>(t) * 501) % lines.size();  // different orders
        if (fresh.encode(lines[i]) != want_bpe[i] || wordpiece().encode(lines[i]) != want_wp[i]) ++bad[static_cast<std::size_t>(t)];
      }
    });
  for (auto& th : threads) th.join();
  CHECK(bad == std::vector<int>(4, 0));
}

TEST_CASE("GPT-2 BPE encodes invalid UTF-8 byte for byte", "[tokenizers]") {
  LORA_REQUIRE_PATH(gpt2_vocab());
  LORA_REQUIRE_PATH(gpt2_merges());
  SECTION("an ill-formed sequence is one 'other' character of the pre-tokenizer") {
    using Pieces = std::vector<std::string_view>;
    CHECK(BpeTokenizer::pre_tokenize("ab\xFF!cd") == Pieces{"ab", "\xFF!", "cd"});
    CHECK(BpeTokenizer::pre_tokenize("caf\xC3 x") == Pieces{"caf", "\xC3", " x"});
    CHECK(BpeTokenizer::pre_tokenize("a \xE2\x82") == Pieces{"a", " \xE2\x82"});
    CHECK(BpeTokenizer::pre_tokenize("x\xED\xA0\x80y") == Pieces{"x", "\xED\xA0\x80", "y"});
    CHECK(BpeTokenizer::pre_tokenize("\xF4\x90\x80\x80") == Pieces{"\xF4\x90\x80\x80"});
  }
  SECTION("its bytes get the byte-level ids and decode back") {
    const Ids ids = bpe().encode("\xFF");
    REQUIRE(ids.size() == 1);
    CHECK(bpe().decode(ids) == "\xFF");
    CHECK(ids[0] == 187);  // bytes_to_unicode maps byte 0xFF to U+00FF "ÿ", id 187
    CHECK(bpe().encode(std::string(1, '\0')) == Ids{188});  // byte 0x00 maps to U+0100 "Ā", id 188
  }
  SECTION("random byte strings round-trip") {
    int bad = 0;
    for (const auto& s : random_byte_strings(3000)) {
      const Ids ids = bpe().encode(s);
      if (!all_below(ids, bpe().vocab_size()) || bpe().decode(ids) != s) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("WordPiece reads invalid UTF-8 as U+FFFD, which cleaning drops", "[tokenizers]") {
  LORA_REQUIRE_PATH(bert_vocab());
  const auto& wp = wordpiece();
  CHECK(wp.encode("ab\xFF" "cd") == wp.encode("abcd"));
  CHECK(wp.encode("caf\xC3") == wp.encode("caf"));
  CHECK(wp.encode("x\xED\xA0\x80y z") == wp.encode("xy z"));
  CHECK(wp.encode("ab\xEF\xBF\xBD" "cd") == wp.encode("abcd"));  // a real U+FFFD is dropped the same way
  int bad = 0;
  for (const auto& s : random_byte_strings(3000)) {
    const Ids ids = wp.encode(s);
    if (ids.size() < 2 || ids.front() != wp.cls_id() || ids.back() != wp.sep_id() || !all_below(ids, wp.vocab_size())) ++bad;
  }
  CHECK(bad == 0);
}

TEST_CASE("WordPiece normalisation steps", "[tokenizers]") {
  LORA_REQUIRE_PATH(bert_vocab());
  const auto& wp = wordpiece();
  SECTION("lowercasing and accent stripping") {
    CHECK(wp.tokenize("H\xC3\xA9llo") == Tokens{"hello"});          // precomposed é
    CHECK(wp.tokenize("He\xCC\x81llo") == Tokens{"hello"});         // e + U+0301
    CHECK(wp.tokenize("\xC3\x85ngstr\xC3\xB6m") == wp.tokenize("angstrom"));
  }
  SECTION("Python's final sigma: word-final capital sigma lowercases to U+03C2") {
    CHECK(wp.tokenize("\xCE\xA3\xCE\x91\xCE\xA3") == Tokens{"\xCF\x83", "##\xCE\xB1", "##\xCF\x82"});  // ΣΑΣ -> σας
  }
  SECTION("CJK ideographs become single-character words") {
    CHECK(wp.tokenize("ab\xE4\xB8\xAD" "cd") == Tokens{"ab", "\xE4\xB8\xAD", "cd"});  // ab中cd
    CHECK(wp.encode("\xE4\xB8\xAD\xE6\x96\x87") == Ids{101, 1746, 1861, 102});    // 中文
  }
  SECTION("words over 100 code points become [UNK]") {
    CHECK(wp.tokenize(std::string(101, 'a')) == Tokens{"[UNK]"});
    const auto hundred = wp.tokenize(std::string(100, 'a'));
    CHECK(hundred.size() > 1);
    CHECK(hundred.front() == "aaa");
    std::string zhe100, zhe101;  // ж: 2 bytes, so 100 of them are 200 bytes but 100 code points
    for (int i = 0; i < 100; ++i) zhe100 += "\xD0\xB6";
    zhe101 = zhe100 + "\xD0\xB6";
    CHECK(wp.tokenize(zhe100).size() == 100);
    CHECK(wp.tokenize(zhe101) == Tokens{"[UNK]"});
    CHECK(wp.tokenize("short " + std::string(150, 'x') + " words") == Tokens{"short", "[UNK]", "words"});
  }
  SECTION("punctuation splits: ASCII symbols and Unicode P*") {
    CHECK(wp.tokenize("hello,world!") == Tokens{"hello", ",", "world", "!"});
    CHECK(wp.tokenize("$5 a^b \xC2\xABx\xC2\xBB") == Tokens{"$", "5", "a", "^", "b", "\xC2\xAB", "x", "\xC2\xBB"});
    CHECK(wp.tokenize("I'm here 100%") == Tokens{"i", "'", "m", "here", "100", "%"});
  }
  SECTION("control and format characters are removed; \\t \\n and Zs are spaces") {
    CHECK(wp.tokenize(std::string("ab\x01" "c\0d\x7f", 7)) == wp.tokenize("abcd"));
    CHECK(wp.tokenize("a\xE2\x80\x8B" "b") == Tokens{"ab"});                           // U+200B (Cf)
    CHECK(wp.tokenize("a\tb\nc\xC2\xA0" "d\xE3\x80\x80" "e") == Tokens{"a", "b", "c", "d", "e"});  // NBSP, U+3000
    CHECK(wp.tokenize("x\xE2\x80\xA8y") == Tokens{"x", "y"});                          // U+2028: str.split() cuts there
  }
  SECTION("word pieces, decode and ids") {
    const Ids ids = wp.encode("Hello, unaffable world!");
    CHECK(wp.tokenize("Hello, unaffable world!") == Tokens{"hello", ",", "una", "##ffa", "##ble", "world", "!"});
    CHECK(wp.decode(ids) == "[CLS] hello , unaffable world ! [SEP]");
    CHECK(wp.decode(ids, true) == "hello , unaffable world !");
    CHECK(wp.id("[MASK]") == 103);
    CHECK(wp.id("##ble") == ids[5]);
    CHECK(wp.id("no-such-token") == wp.unk_id());
    CHECK(wp.token(101) == "[CLS]");
    CHECK(lora_test::contains(lora_test::error_of<examples::DataError>([&] { wp.decode({30522}); }), "30522"));
  }
  SECTION("special-token strings in text are plain text") {
    CHECK(wp.tokenize("[SEP]") == Tokens{"[", "sep", "]"});
  }
}

TEST_CASE("WordPiece truncation and batches", "[tokenizers]") {
  LORA_REQUIRE_PATH(bert_vocab());
  const auto& wp = wordpiece();
  const std::string text = "the quick brown fox jumps over the lazy dog";
  const Ids full = wp.encode(text);
  REQUIRE(full.size() == 11);

  SECTION("truncation keeps [CLS] first and [SEP] last") {
    const Ids cut = wp.encode(text, true, 6);
    CHECK(cut == Ids{full[0], full[1], full[2], full[3], full[4], wp.sep_id()});
    CHECK(wp.encode(text, true, 11) == full);
    CHECK(wp.encode(text, true, 2) == Ids{wp.cls_id(), wp.sep_id()});
    CHECK(wp.encode(text, false, 3) == Ids{full[1], full[2], full[3]});
    CHECK(lora_test::contains(lora_test::error_of<examples::DataError>([&] { wp.encode(text, true, 1); }), "max_length"));
  }
  SECTION("padding to the longest row, with an attention mask") {
    const auto b = wp.encode_batch({text, "hello", ""});
    REQUIRE(b.rows == 3);
    REQUIRE(b.cols == 11);
    REQUIRE(b.input_ids.size() == 33);
    CHECK(Ids(b.input_ids.begin(), b.input_ids.begin() + 11) == full);
    CHECK(Ids(b.input_ids.begin() + 11, b.input_ids.begin() + 22) == Ids{101, 7592, 102, 0, 0, 0, 0, 0, 0, 0, 0});
    CHECK(Ids(b.input_ids.begin() + 22, b.input_ids.end()) == Ids{101, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0});
    CHECK(Ids(b.attention_mask.begin() + 11, b.attention_mask.begin() + 22) == Ids{1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0});
    CHECK(Ids(b.attention_mask.begin(), b.attention_mask.begin() + 11) == Ids(11, 1));
  }
  SECTION("padding (and truncating) to a fixed length") {
    const auto b = wp.encode_batch({text, "hello"}, 8, Padding::kMaxLength);
    REQUIRE(b.rows == 2);
    REQUIRE(b.cols == 8);
    CHECK(Ids(b.input_ids.begin(), b.input_ids.begin() + 8) == wp.encode(text, true, 8));
    CHECK(Ids(b.input_ids.begin() + 8, b.input_ids.end()) == Ids{101, 7592, 102, 0, 0, 0, 0, 0});
    CHECK(Ids(b.attention_mask.begin() + 8, b.attention_mask.end()) == Ids{1, 1, 1, 0, 0, 0, 0, 0});
    const auto longest = wp.encode_batch({text, "hello"}, 5);
    CHECK(longest.cols == 5);
    CHECK(lora_test::contains(
        lora_test::error_of<examples::DataError>([&] { wp.encode_batch({text}, 0, Padding::kMaxLength); }), "max_length"));
  }
}

TEST_CASE("Unicode helpers: decoding, Python lowercasing, NFD", "[tokenizers]") {
  namespace u = text::unicode;
  SECTION("ill-formed UTF-8 is consumed by maximal subparts, as Python's errors='replace'") {
    auto steps = [](std::string_view s) {
      std::vector<std::uint32_t> lens;
      for (std::size_t i = 0; i < s.size();) {
        const auto st = u::decode(s, i);
        lens.push_back(st.valid ? st.len : 100 + st.len);  // 100+n: an invalid step of n bytes
        i += st.len;
      }
      return lens;
    };
    using L = std::vector<std::uint32_t>;
    CHECK(steps("a\xC3\xA9") == L{1, 2});
    CHECK(steps("\xE2\x82") == L{102});              // truncated 3-byte sequence: one U+FFFD
    CHECK(steps("\xF0\x9F\x98" "a") == L{103, 1});    // truncated 4-byte sequence
    CHECK(steps("\xC0\xAF") == L{101, 101});          // overlong
    CHECK(steps("\xED\xA0\x80") == L{101, 101, 101}); // surrogate
    CHECK(steps("\xF4\x90\x80\x80") == L{101, 101, 101, 101});  // above U+10FFFF
    CHECK(u::decode("\xF0\x9F\x98\x80", 0).cp == 0x1F600);
  }
  SECTION("lowercasing follows Python's str.lower()") {
    auto lower = [](std::u32string_view s) {
      std::u32string out;
      u::append_lower(s, out);
      return out;
    };
    CHECK(lower(U"\u03A3\u0391\u03A3") == U"\u03C3\u03B1\u03C2");   // ΣΑΣ -> σας
    CHECK(lower(U"a\u03A3'b") == U"a\u03C3'b");                   // not final: a cased letter follows
    CHECK(lower(U"\u03A3") == U"\u03C3");                         // no cased letter before
    CHECK(lower(U"\u00BA\u03A3") == U"\u00BA\u03C2");             // º is cased
    CHECK(lower(U"\u0130") == U"i\u0307");                        // İ -> i + combining dot
    CHECK(lower(U"\u1E9E\u01C5") == U"\u00DF\u01C6");
  }
  SECTION("NFD decomposes and puts combining marks in canonical order") {
    std::u32string out;
    u::append_nfd(U"\u1E0B\u0323\uAC00", out);  // ḋ + dot below, then a Hangul syllable
    CHECK(out == U"d\u0323\u0307\u1100\u1161");
  }
}

TEST_CASE("Tokenizer loading errors name the file", "[tokenizers]") {
  SECTION("missing WordPiece vocabulary") {
    const auto msg = lora_test::error_of<examples::FileError>([] { WordPieceTokenizer("/nonexistent/dir/vocab.txt"); });
    CHECK(lora_test::contains(msg, "/nonexistent/dir/vocab.txt"));
    CHECK(lora_test::contains(msg, "vocab.txt of an uncased BERT model"));
  }
  SECTION("WordPiece vocabulary without a special token") {
    const auto path = lora_test::temp_file("vocab.txt", "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n");
    const auto msg = lora_test::error_of<examples::FileError>([&] { WordPieceTokenizer{path}; });
    CHECK(lora_test::contains(msg, path.string()));
    CHECK(lora_test::contains(msg, "[MASK]"));
    fs::remove_all(path.parent_path());
  }
  SECTION("missing BPE files") {
    const auto msg = lora_test::error_of<examples::FileError>([] { BpeTokenizer("/nonexistent/vocab.json", "/nonexistent/merges.txt"); });
    CHECK(lora_test::contains(msg, "/nonexistent/vocab.json"));
    LORA_REQUIRE_PATH(gpt2_vocab());
    const auto msg2 = lora_test::error_of<examples::FileError>([] { BpeTokenizer(gpt2_vocab(), "/nonexistent/merges.txt"); });
    CHECK(lora_test::contains(msg2, "/nonexistent/merges.txt"));
  }
  SECTION("malformed merges.txt") {
    LORA_REQUIRE_PATH(gpt2_vocab());
    const auto path = lora_test::temp_file("merges.txt", "#version: 0.2\n\xC4\xA0 t\n\xC4\xA0 a b\n");
    const auto msg = lora_test::error_of<examples::FileError>([&] { BpeTokenizer(gpt2_vocab(), path); });
    CHECK(lora_test::contains(msg, path.string()));
    CHECK(lora_test::contains(msg, "line 3"));
    fs::remove_all(path.parent_path());
  }
}

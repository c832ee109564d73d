// Dataset readers and batching (examples/common/data/): CSV, AG-News, WikiText, batches.
#include "data/agnews.hpp"
#include "data/batching.hpp"
#include "data/csv.hpp"
#include "data/wikitext.hpp"
#include "models/gpt2.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "support.hpp"

namespace {

using lora_test::contains;
using lora_test::error_of;

/// One id per byte: a toy tokenizer.
std::vector<std::int64_t> bytes_of(const std::string& s) {
  return std::vector<std::int64_t>(s.begin(), s.end());
}

/// Number of whitespace-separated words: a toy length for batching tests.
std::int64_t word_count(const std::string& s) {
  std::istringstream in(s);
  std::int64_t n = 0;
  for (std::string w; in >> w;) ++n;
  return n;
}

std::vector<std::string> texts_of(const std::vector<data::Example>& xs) {
  std::vector<std::string> t;
  for (const auto& x : xs) t.push_back(x.text);
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// CSV

TEST_CASE("csv: plain and quoted fields, doubled quotes, embedded comma and newline", "[data][csv]") {
  const std::string text =
      "a,b,c\n"
      "\"x, y\",\"say \"\"hi\"\"\",\"\"\n"
      "\"two\nlines\",plain,\"end\"\n";
  const auto rows = data::parse_csv(text, "t.csv");
  REQUIRE(rows.size() == 3);
  CHECK(rows[0].fields == std::vector<std::string>{"a", "b", "c"});
  CHECK(rows[1].fields == std::vector<std::string>{"x, y", "say \"hi\"", ""});
  CHECK(rows[2].fields == std::vector<std::string>{"two\nlines", "plain", "end"});
  CHECK(rows[0].line == 1);
  CHECK(rows[1].line == 2);
  CHECK(rows[2].line == 3);
}

TEST_CASE("csv: CRLF, empty fields, blank lines, no final newline, BOM", "[data][csv]") {
  SECTION("CRLF line ends; a quoted CRLF stays as written") {
    const auto rows = data::parse_csv("a,b\r\n\"c\r\nd\",e\r\nf,g\r\n", "crlf.csv");
    REQUIRE(rows.size() == 3);
    CHECK(rows[0].fields == std::vector<std::string>{"a", "b"});
    CHECK(rows[1].fields == std::vector<std::string>{"c\r\nd", "e"});
    CHECK(rows[2].fields == std::vector<std::string>{"f", "g"});
    CHECK(rows[2].line == 4);
  }
  SECTION("empty fields and a missing final newline") {
    const auto rows = data::parse_csv(",\n,x", "e.csv");
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].fields == std::vector<std::string>{"", ""});
    CHECK(rows[1].fields == std::vector<std::string>{"", "x"});
  }
  SECTION("empty lines are skipped; line numbers still count them") {
    const auto rows = data::parse_csv("\n1,2\n\n\n3,4\n\n", "blank.csv");
    REQUIRE(rows.size() == 2);
    CHECK(rows[0].line == 2);
    CHECK(rows[1].line == 5);
    CHECK(data::parse_csv("", "empty.csv").empty());
  }
  SECTION("a UTF-8 byte-order mark is ignored") {
    const auto rows = data::parse_csv("\xEF\xBB\xBF\"a\",b\n", "bom.csv");
    CHECK(rows.at(0).fields == std::vector<std::string>{"a", "b"});
  }
  SECTION("a quote inside an unquoted field is data") {
    CHECK(data::parse_csv("ab\"c,d\n", "q.csv").at(0).fields == std::vector<std::string>{"ab\"c", "d"});
  }
}

TEST_CASE("csv: errors name the file and the line", "[data][csv]") {
  SECTION("unterminated quote: the line where the field starts") {
    const auto msg = error_of<examples::FileError>([] { data::parse_csv("a,b\nc,d\n\"e,\nf\ng\n", "bad.csv"); });
    INFO(msg);
    CHECK(contains(msg, "bad.csv:3:"));
    CHECK(contains(msg, "unterminated"));
  }
  SECTION("wrong number of fields, after a row with an embedded newline") {
    const auto msg = error_of<examples::FileError>([] { data::parse_csv("a,b\n\"x\ny\",z\n1,2,3\n", "cols.csv"); });
    INFO(msg);
    CHECK(contains(msg, "cols.csv:4:"));
    CHECK(contains(msg, "3 fields, expected 2"));
  }
  SECTION("the expected count is checked on the first row too") {
    const auto msg = error_of<examples::FileError>([] { data::parse_csv("a,b\n", "n.csv", 3); });
    INFO(msg);
    CHECK(contains(msg, "n.csv:1:"));
    CHECK(contains(msg, "2 fields, expected 3"));
  }
  SECTION("text after a closing quote") {
    const auto msg = error_of<examples::FileError>([] { data::parse_csv("a,b\n\"x\"y,z\n", "after.csv"); });
    INFO(msg);
    CHECK(contains(msg, "after.csv:2:"));
  }
  SECTION("a missing file") {
    const auto msg = error_of<examples::FileError>([] { data::read_csv("/nonexistent/dir/none.csv"); });
    INFO(msg);
    CHECK(contains(msg, "/nonexistent/dir/none.csv"));
  }
}

// ---------------------------------------------------------------------------------------------
// Deterministic shuffle

TEST_CASE("shuffle: a fixed algorithm, same seed same order, other seed other order", "[data][shuffle]") {
  const auto p = data::permutation(1000, 42);
  CHECK(p == data::permutation(1000, 42));
  CHECK(p != data::permutation(1000, 43));
  auto sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) REQUIRE(sorted[i] == i);
  // Pinned: std::mt19937_64 is specified by the standard and so are uniform_below() and
  // shuffle(), so these values must be the same with every compiler and standard library
  // (checked against an independent Python implementation of mt19937_64 and this algorithm).
  CHECK(data::permutation(10, 42) == std::vector<std::size_t>{1, 7, 9, 0, 3, 8, 4, 2, 5, 6});
  CHECK(data::permutation(0, 1).empty());
  CHECK(data::permutation(1, 1) == std::vector<std::size_t>{0});
}

TEST_CASE("shuffle: uniform_below stays in range and reaches every value", "[data][shuffle]") {
  std::mt19937_64 rng(7);
  std::vector<int> seen(7, 0);
  for (int k = 0; k < 7000; ++k) ++seen.at(data::uniform_below(rng, 7));
  for (int c : seen) CHECK(c > 800);
  CHECK(data::uniform_below(rng, 1) == 0);
}

// ---------------------------------------------------------------------------------------------
// AG-News

TEST_CASE("agnews: the official test set", "[data][agnews]") {
  const auto path = lora_test::data("agnews/test.csv");
  LORA_REQUIRE_PATH(path);
  const auto test = data::read_agnews(path);
  REQUIRE(test.size() == 7600);
  std::map<std::int64_t, int> per_class;
  for (const auto& x : test) ++per_class[x.label];
  CHECK(per_class == std::map<std::int64_t, int>{{0, 1900}, {1, 1900}, {2, 1900}, {3, 1900}});
  CHECK(test[0].label == 2);
  CHECK(test[0].text ==
        "Fears for T N pension after talks Unions representing workers at Turner   Newall say they are "
        "'disappointed' after talks with stricken parent firm Federal Mogul.");
  // The title and the description are joined by one space, bytes otherwise kept.
  const auto rows = data::read_csv(path, 3);
  for (std::size_t i = 0; i < rows.size(); ++i)
    REQUIRE(test[i].text == rows[i].fields[1] + " " + rows[i].fields[2]);
}

TEST_CASE("agnews: a class outside 1..4 names the file and line", "[data][agnews]") {
  const auto p = lora_test::temp_file("lora_test_agnews_bad.csv", "\"1\",\"t\",\"d\"\n\"5\",\"t\",\"d\"\n");
  const auto msg = error_of<examples::FileError>([&] { data::read_agnews(p); });
  INFO(msg);
  CHECK(contains(msg, p.string() + ":2:"));
  CHECK(contains(msg, "\"5\""));
  lora_test::fs::remove_all(p.parent_path());
}

TEST_CASE("agnews: the study's 90/10 split of the 14,995-row train subset", "[data][agnews]") {
  const auto path = lora_test::data("agnews/train_subset_14995.csv");
  LORA_REQUIRE_PATH(path);
  const auto pool = data::read_agnews(path);
  REQUIRE(pool.size() == 14995);
  // 10% part: ceil(1499.5) = 1500 rows; 90% part: 13,495 rows.
  REQUIRE(data::val_part_size(14995, 0.1) == 1500);
  REQUIRE(data::val_part_size(120000, 0.1) == 12000);

  SECTION("train 10,000 + val 1,400 fits, disjoint, deterministic") {
    data::SplitOptions o;
    o.val_size = 1400;
    const auto s = data::split_train_val(pool, o, path.string());
    CHECK(s.train.size() == 10000);
    CHECK(s.val.size() == 1400);
    const auto train = texts_of(s.train), val = texts_of(s.val);
    const std::set<std::string> train_set(train.begin(), train.end());
    CHECK(train_set.size() == train.size());
    for (const auto& t : val) REQUIRE(train_set.count(t) == 0);
    CHECK(texts_of(data::split_train_val(pool, o, path.string()).train) == train);
    o.seed = 43;
    CHECK(texts_of(data::split_train_val(pool, o, path.string()).train) != train);
  }
  SECTION("the largest sizes that fit: 13,495 + 1,500") {
    data::SplitOptions o;
    o.train_size = 13495;
    o.val_size = 1500;
    const auto s = data::split_train_val(pool, o, path.string());
    CHECK(s.train.size() + s.val.size() == pool.size());
  }
  SECTION("the study's val 2,000 does not fit: a clear error") {
    const auto msg = error_of<examples::DataError>([&] { data::split_train_val(pool, data::SplitOptions{}, path.string()); });
    INFO(msg);
    CHECK(contains(msg, "--val-size 2000"));
    CHECK(contains(msg, "1500"));
    CHECK(contains(msg, "14995"));
    CHECK(contains(msg, "train_subset_14995.csv"));
  }
  SECTION("train 13,496 does not fit: a clear error") {
    data::SplitOptions o;
    o.train_size = 13496;
    o.val_size = 100;
    const auto msg = error_of<examples::DataError>([&] { data::split_train_val(pool, o, path.string()); });
    INFO(msg);
    CHECK(contains(msg, "--train-size 13496"));
    CHECK(contains(msg, "13495"));
  }
}

// ---------------------------------------------------------------------------------------------
// WikiText

TEST_CASE("wikitext: lines, token stream and blocks on a toy text", "[data][wikitext]") {
  const auto p = lora_test::temp_file("lora_test_wiki.raw", " \n = Title = \n \n abc \n\n de \n");
  const auto lines = data::read_lines(p);
  REQUIRE(lines == std::vector<std::string>{" \n", " = Title = \n", " \n", " abc \n", "\n", " de \n"});
  const auto kept = data::text_lines(lines);
  REQUIRE(kept == std::vector<std::string>{" = Title = \n", " abc \n", " de \n"});
  const auto stream = data::token_stream(kept, bytes_of);
  CHECK(stream == bytes_of(" = Title = \n abc \n de \n"));
  REQUIRE(stream.size() == 23);

  const auto blocks = data::make_blocks(stream, 10);
  REQUIRE(blocks.size() == 3);
  CHECK(blocks[0] == bytes_of(" = Title ="));
  CHECK(blocks[1] == bytes_of(" \n abc \n d"));
  CHECK(blocks[2] == bytes_of("e \n"));  // the rest: a partial block
  std::vector<std::int64_t> joined;
  for (const auto& b : blocks) joined.insert(joined.end(), b.begin(), b.end());
  CHECK(joined == stream);  // every token once, in order
  CHECK(data::predicted_tokens(blocks) == 23 - 3);

  const auto split = data::load_wikitext(p, bytes_of, 10);
  CHECK(split.blocks == blocks);
  CHECK(split.lines == 3);
  CHECK(split.tokens == 23);
  CHECK(split.predicted == 20);
  lora_test::fs::remove_all(p.parent_path());
}

TEST_CASE("wikitext: a padded last block, its labels and the perplexity rule", "[data][wikitext]") {
  const std::vector<std::int64_t> stream = {5, 6, 7, 8, 9, 10, 11};
  const auto blocks = data::make_blocks(stream, 3);  // {5,6,7} {8,9,10} {11}
  REQUIRE(blocks.size() == 3);
  CHECK(blocks[2] == std::vector<std::int64_t>{11});
  data::BatchOptions o;
  o.max_len = 3;
  o.padding = data::Padding::Fixed;
  o.pad_id = 0;
  const auto b = data::collate_lm(blocks, {0, 1, 2}, o);
  CHECK(torch::equal(b.input_ids, torch::tensor({5, 6, 7, 8, 9, 10, 11, 0, 0}, torch::kInt64).view({3, 3})));
  CHECK(torch::equal(b.attention_mask, torch::tensor({1, 1, 1, 1, 1, 1, 1, 0, 0}, torch::kInt64).view({3, 3})));
  CHECK(torch::equal(b.labels, torch::tensor({5, 6, 7, 8, 9, 10, 11, -100, -100}, torch::kInt64).view({3, 3})));

  // Uniform logits over V ids: NLL log V per predicted token, perplexity V, and only the
  // 4 targets (6, 7, 9, 10) are counted; padding and first tokens never are.
  const std::int64_t v = 16;
  const auto s = models::causal_lm_nll(torch::zeros({3, 3, v}), b.labels);
  CHECK(s.tokens == 4);
  CHECK(s.tokens == data::predicted_tokens(blocks));
  CHECK(s.nll == Approx(4 * std::log(16.0)));
  CHECK(s.perplexity() == Approx(16.0));

  // The sum is token-weighted across batches.
  auto logits = torch::zeros({1, 3, v});
  logits[0][0][6] = 100.0;  // position 0 predicts token 6 with near certainty
  models::TokenNll total = models::causal_lm_nll(logits, b.labels.slice(0, 0, 1));
  total += models::causal_lm_nll(torch::zeros({2, 3, v}), b.labels.slice(0, 1, 3));
  CHECK(total.tokens == 4);
  CHECK(total.nll == Approx(3 * std::log(16.0)).margin(1e-6));
  CHECK(contains(error_of<examples::DataError>([] { data::make_blocks({1, 2}, 1); }), "block_size is 1"));
}

TEST_CASE("wikitext: the real validation split", "[data][wikitext]") {
  const auto path = lora_test::data("wikitext-2-raw/wiki.valid.raw");
  LORA_REQUIRE_PATH(path);
  const auto lines = data::read_lines(path);
  REQUIRE(lines.size() == 3760);
  CHECK(lines[1] == " = Homarus gammarus = \n");
  const auto kept = data::text_lines(lines);
  CHECK(kept.size() == 2461);
  std::size_t bytes = 0;
  for (const auto& l : kept) bytes += l.size();
  const auto split = data::load_wikitext(path, bytes_of, 1024);
  CHECK(split.lines == 2461);
  CHECK(split.tokens == static_cast<std::int64_t>(bytes));
  CHECK(split.blocks.size() == (bytes + 1023) / 1024);
  CHECK(split.predicted == split.tokens - static_cast<std::int64_t>(split.blocks.size()));
}

// ---------------------------------------------------------------------------------------------
// Batching

TEST_CASE("batching: dynamic padding, masks, labels, truncation, fixed length", "[data][batching]") {
  const std::vector<std::vector<std::int64_t>> seqs = {{1, 2, 3}, {4}, {5, 6, 7, 8, 9}, {10, 11}};
  const std::vector<std::int64_t> labels = {0, 1, 2, 3};
  data::BatchOptions o;
  o.pad_id = 99;

  SECTION("pads to the longest of the batch") {
    const auto b = data::collate_classification(seqs, labels, {0, 1, 3}, o);
    CHECK(b.input_ids.sizes() == torch::IntArrayRef{3, 3});
    CHECK(torch::equal(b.input_ids, torch::tensor({1, 2, 3, 4, 99, 99, 10, 11, 99}, torch::kInt64).view({3, 3})));
    CHECK(torch::equal(b.attention_mask, torch::tensor({1, 1, 1, 1, 0, 0, 1, 1, 0}, torch::kInt64).view({3, 3})));
    CHECK(torch::equal(b.labels, torch::tensor({0, 1, 3}, torch::kInt64)));
    CHECK(b.input_ids.dtype() == torch::kInt64);
  }
  SECTION("bool mask") {
    o.mask_dtype = torch::kBool;
    const auto b = data::collate_classification(seqs, labels, {1, 3}, o);
    CHECK(b.attention_mask.dtype() == torch::kBool);
    CHECK(b.attention_mask.sum().item<std::int64_t>() == 3);
  }
  SECTION("LM labels: the ids, -100 on padding") {
    const auto b = data::collate_lm(seqs, {1, 3}, o);
    CHECK(torch::equal(b.labels, torch::tensor({4, -100, 10, 11}, torch::kInt64).view({2, 2})));
  }
  SECTION("truncation to max_len, optionally keeping the last id") {
    o.max_len = 3;
    auto b = data::collate_classification(seqs, labels, {2, 1}, o);
    CHECK(torch::equal(b.input_ids, torch::tensor({5, 6, 7, 4, 99, 99}, torch::kInt64).view({2, 3})));
    o.keep_last = true;
    b = data::collate_classification(seqs, labels, {2}, o);
    CHECK(torch::equal(b.input_ids, torch::tensor({5, 6, 9}, torch::kInt64).view({1, 3})));
  }
  SECTION("fixed length pads every batch to max_len") {
    o.padding = data::Padding::Fixed;
    o.max_len = 8;
    const auto b = data::collate_classification(seqs, labels, {1}, o);
    CHECK(b.input_ids.sizes() == torch::IntArrayRef{1, 8});
    CHECK(b.attention_mask.sum().item<std::int64_t>() == 1);
    CHECK(data::padding_count(data::lengths_of(seqs), {{0, 1, 2, 3}}, o) == 4 * 8 - 11);
  }
  SECTION("errors") {
    CHECK(contains(error_of<examples::DataError>([&] { data::collate_lm(seqs, {7}, o); }), "index 7"));
    CHECK(contains(error_of<examples::DataError>([&] { data::collate_lm({{1}, {}}, {1}, o); }), "sequence 1 is empty"));
    o.batch_size = 0;
    std::mt19937_64 rng(1);
    CHECK(contains(error_of<examples::DataError>([&] { data::plan_batches({1, 2}, o, rng); }), "batch_size is 0"));
  }
}

TEST_CASE("batching: plans cover every example once and are deterministic", "[data][batching]") {
  std::vector<std::int64_t> lengths;
  for (int i = 0; i < 1003; ++i) lengths.push_back(1 + (i * 37) % 200);
  data::BatchOptions o;
  o.batch_size = 32;

  SECTION("every example once; same seed same plan; a new plan each epoch") {
    for (std::int64_t bucket : {0, 5}) {
      CAPTURE(bucket);
      o.bucket_batches = bucket;
      std::mt19937_64 rng(42), same(42), other(43);
      const auto plan = data::plan_batches(lengths, o, rng);
      REQUIRE(plan.size() == 32);  // 31 full batches and one of 11
      std::vector<std::size_t> all;
      for (const auto& b : plan) all.insert(all.end(), b.begin(), b.end());
      std::sort(all.begin(), all.end());
      REQUIRE(all.size() == lengths.size());
      for (std::size_t i = 0; i < all.size(); ++i) REQUIRE(all[i] == i);
      CHECK(plan == data::plan_batches(lengths, o, same));
      CHECK(plan != data::plan_batches(lengths, o, other));
      CHECK(plan != data::plan_batches(lengths, o, rng));  // the next epoch differs
    }
  }
  SECTION("drop_last drops the final partial batch") {
    o.drop_last = true;
    std::mt19937_64 rng(42);
    CHECK(data::plan_batches(lengths, o, rng).size() == 31);
  }
  SECTION("without shuffling: the examples in order") {
    o.shuffle = false;
    std::mt19937_64 rng(1);
    const auto plan = data::plan_batches(lengths, o, rng);
    CHECK(plan[0][0] == 0);
    CHECK(plan[1][0] == 32);
    CHECK(plan.back().back() == 1002);
  }
  SECTION("bucketing sorts each chunk of K batches by length, longest first") {
    o.shuffle = false;
    o.bucket_batches = 5;
    std::mt19937_64 rng(1);
    const auto plan = data::plan_batches(lengths, o, rng);
    for (std::size_t chunk = 0; chunk < plan.size(); chunk += 5) {
      std::vector<std::int64_t> seen;
      for (std::size_t b = chunk; b < std::min(chunk + 5, plan.size()); ++b)
        for (std::size_t i : plan[b]) seen.push_back(lengths[i]);
      CHECK(std::is_sorted(seen.rbegin(), seen.rend()));
    }
  }
}

TEST_CASE("batching: length bucketing pads less on AG-News lengths", "[data][batching]") {
  const auto path = lora_test::data("agnews/test.csv");
  LORA_REQUIRE_PATH(path);
  std::vector<std::int64_t> lengths;
  for (const auto& x : data::read_agnews(path)) lengths.push_back(word_count(x.text));
  data::BatchOptions o;
  o.batch_size = 32;

  std::mt19937_64 rng(42);
  const auto plain = data::padding_count(lengths, data::plan_batches(lengths, o, rng), o);
  o.bucket_batches = 50;
  const auto bucketed_plan = data::plan_batches(lengths, o, rng);
  const auto bucketed = data::padding_count(lengths, bucketed_plan, o);
  o.padding = data::Padding::Fixed;
  const auto fixed = data::padding_count(lengths, bucketed_plan, o);
  std::int64_t real = 0;
  for (auto n : lengths) real += n;
  std::cout << "  AG-News test, words per batch of 32: real " << real << ", padding without bucketing " << plain
            << ", with bucketing " << bucketed << ", fixed 512 " << fixed << "\n";
  CHECK(bucketed < plain / 4);
  CHECK(plain < fixed);
  CHECK(fixed == 512 * static_cast<std::int64_t>(lengths.size()) - real);
}

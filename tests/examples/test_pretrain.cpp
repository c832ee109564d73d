// pretrain (examples/pretrain.cpp) and what it is made of: the text -> blocks pipeline
// (data/corpus.hpp), MLM masking (pretrain/masking.hpp), initialisation, AdamW and the LR
// schedule (pretrain/recipe.hpp), and the program end to end, as a separate process, on tiny
// models: the Hub folder it writes loads back through the normal loaders with the same logits,
// and a run killed and resumed gives the curve of an uninterrupted one.
#include <lora/safetensors.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "data/corpus.hpp"
#include "models/checkpoint.hpp"
#include "models/hub_config.hpp"
#include "pretrain/masking.hpp"
#include "pretrain/objectives.hpp"
#include "pretrain/recipe.hpp"
#include "pretrain/state.hpp"
#include "support.hpp"
#include "text/bpe.hpp"
#include "text/wordpiece.hpp"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using lora_test::contains;
using lora_test::error_of;

std::vector<int64_t> iota_ids(int64_t n, int64_t from = 1000) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = from + i;
  return v;
}

/// The pretrain command line for a tiny run into `out` (a few seconds): a slice of text, dim 16,
/// 1 layer, 2 heads, blocks of 32, batch 4, 6 steps, one thread. `flags` add to or replace these
/// ({"--lr", "2e-3"}; a value "" gives the flag alone).
std::string tiny_args(const std::string& layout, const fs::path& out, const std::map<std::string, std::string>& flags = {}) {
  std::map<std::string, std::string> f = {
      {"--layout", layout},
      {"--shared", lora_test::shared_dir().string()},
      {"--out", out.string()},
      {"--text", layout == "distilbert" ? "corpus/wikitext103_train_head/wiki.train.tokens.head.txt:1-200"
                                        : "agnews/train_subset_14995.csv:10001-10300"},
      {"--dim", "16"},
      {"--layers", "1"},
      {"--heads", "2"},
      {"--block-size", "32"},
      {"--held-out", "8"},
      {"--batch-size", "4"},
      {"--steps", "6"},
      {"--eval-every", "3"},
      {"--log-every", "1"},
      {"--threads", "1"}};
  for (const auto& [k, v] : flags) f[k] = v;
  std::string cmd = LORA_PRETRAIN_PATH;
  for (const auto& [k, v] : f) cmd += " " + k + (v.empty() ? "" : " " + v);
  return cmd;
}

/// The number after `label` in `text`, or NaN.
double number_after(const std::string& text, const std::string& label) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(label + R"(\s*([-+0-9.eE]+|nan|inf))"))) return NAN;
  return std::stod(m[1].str());
}

/// Copies the "model.<name>" tensors of a pretrain checkpoint into `model` by name: the trained
/// model as it was in the program's memory when it wrote the checkpoint.
void load_checkpoint_params(torch::nn::Module& model, const fs::path& checkpoint) {
  const lora::safetensors::File file(checkpoint.string());
  torch::NoGradGuard no_grad;
  int copied = 0;
  for (auto& p : model.named_parameters(/*recurse=*/true))
    if (file.contains("model." + p.key())) {
      p.value().copy_(file.tensor("model." + p.key()));
      ++copied;
    }
  REQUIRE(copied > 0);
}

/// A (n, T) batch of random token ids below `vocab`, drawn from `seed`.
torch::Tensor some_ids(int64_t n, int64_t T, int64_t vocab, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randint(0, vocab, {n, T}, gen, torch::kLong);
}

/// Max |a - b| over two curves' step entries, for `key`; REQUIREs the same steps.
double curve_diff(const json& a, const json& b, const std::string& section, const std::string& key) {
  std::map<int64_t, double> va, vb;
  for (const auto& e : a.at(section)) va[e.at("step").get<int64_t>()] = e.at(key).get<double>();
  for (const auto& e : b.at(section)) vb[e.at("step").get<int64_t>()] = e.at(key).get<double>();
  std::vector<int64_t> sa, sb;
  for (const auto& [s, v] : va) sa.push_back(s);
  for (const auto& [s, v] : vb) sb.push_back(s);
  REQUIRE(sa == sb);
  REQUIRE(a.at(section).size() == va.size());  // no step twice
  REQUIRE(b.at(section).size() == vb.size());
  double d = 0;
  for (const auto& [s, v] : va) d = std::max(d, std::abs(v - vb.at(s)));
  return d;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The text -> blocks pipeline

TEST_CASE("corpus: text sources with line ranges, and their errors", "[pretrain][corpus]") {
  const auto a = data::parse_text_source("corpus/x.txt", "/data");
  CHECK(a.path == fs::path("/data/corpus/x.txt"));
  CHECK(a.first == 1);
  CHECK(a.last == 0);
  CHECK_FALSE(a.csv);
  const auto b = data::parse_text_source("agnews/train.csv:10001-14995", "/data");
  CHECK(b.path == fs::path("/data/agnews/train.csv"));
  CHECK(b.first == 10001);
  CHECK(b.last == 14995);
  CHECK(b.csv);
  const auto c = data::parse_text_source("/abs/y.txt:5-", "/data");
  CHECK(c.path == fs::path("/abs/y.txt"));
  CHECK(c.first == 5);
  CHECK(c.last == 0);
  CHECK(contains(error_of<examples::UsageError>([] { data::parse_text_source("x.txt:9-3", "/d"); }), "9-3"));
  CHECK(contains(error_of<examples::UsageError>([] { data::parse_text_source("x.txt:0-3", "/d"); }), "FIRST-LAST"));

  const auto dir = lora_test::temp_dir("corpus_src");
  std::ofstream(dir / "t.txt") << " = Title = \n\nfirst line\n = = Section = = \n  \nsecond @-@ line , 1 @,@ 000 @.@ 5\n";
  const auto texts = data::read_texts(data::parse_text_source("t.txt", dir), data::CleanupRules{});
  REQUIRE(texts.size() == 2);
  CHECK(texts[0] == "first line");
  CHECK(texts[1] == "second-line , 1,000.5");
  const auto ranged = data::read_texts(data::parse_text_source("t.txt:3-3", dir), data::CleanupRules{});
  CHECK(ranged == std::vector<std::string>{"first line"});
  const auto err = error_of<examples::FileError>([&] { data::read_texts(data::parse_text_source("t.txt:2-99", dir), {}); });
  CHECK(contains(err, "has 6"));
  CHECK(contains(error_of<examples::FileError>([&] { data::read_texts(data::parse_text_source("none.txt", dir), {}); }),
                 (dir / "none.txt").string()));
  fs::remove_all(dir);
}

TEST_CASE("corpus: token stream with separators, framed blocks, held-out split", "[pretrain][corpus]") {
  const auto dir = lora_test::temp_dir("corpus_blocks");
  std::ofstream(dir / "t.txt") << "abc\n\nde\n";
  const data::Tokenize bytes = [](const std::string& s) { return std::vector<int64_t>(s.begin(), s.end()); };
  const std::vector<data::TextSource> src = {data::parse_text_source("t.txt", dir)};
  auto s = data::token_stream(src, {}, bytes, data::Separator::none);
  CHECK(s.ids == std::vector<int64_t>{'a', 'b', 'c', 'd', 'e'});
  CHECK(s.texts == 2);
  s = data::token_stream(src, {}, bytes, data::Separator::eos, 7);
  CHECK(s.ids == std::vector<int64_t>{'a', 'b', 'c', 7, 'd', 'e', 7});
  s = data::token_stream(src, {}, bytes, data::Separator::newline);
  CHECK(s.ids == std::vector<int64_t>{'a', 'b', 'c', '\n', 'd', 'e', '\n'});
  fs::remove_all(dir);

  // Framed: 3 text tokens per block of 5, the last 2 stream tokens dropped.
  const auto framed = data::cut_blocks(iota_ids(11), 5, 101, 102);
  REQUIRE(framed.count() == 3);
  CHECK(std::vector<int64_t>(framed.block(1), framed.block(1) + 5) == std::vector<int64_t>{101, 1003, 1004, 1005, 102});
  const auto plain = data::cut_blocks(iota_ids(11), 5);
  REQUIRE(plain.count() == 2);
  CHECK(plain.block(1)[0] == 1005);
  CHECK_THROWS_AS(data::cut_blocks(iota_ids(11), 2, 101, 102), examples::UsageError);

  const auto first = data::split_held_out(framed, 1, /*at_end=*/false);
  CHECK(first.held_out.count() == 1);
  CHECK(first.held_out.block(0)[1] == 1000);
  CHECK(first.train.count() == 2);
  const auto last = data::split_held_out(framed, 1, /*at_end=*/true);
  CHECK(last.held_out.block(0)[1] == 1006);
  CHECK(last.train.block(0)[1] == 1000);
  CHECK(contains(error_of<examples::DataError>([&] { data::split_held_out(framed, 3, false); }), "--held-out 3"));
}

TEST_CASE("corpus: the block order is a permutation per epoch, reshuffled, a function of (seed, sample)",
          "[pretrain][corpus]") {
  data::BlockOrder order(50, 7), again(50, 7), other(50, 8);
  std::vector<int64_t> e0, e1;
  for (uint64_t g = 0; g < 50; ++g) e0.push_back(order.at(g));
  for (uint64_t g = 50; g < 100; ++g) e1.push_back(order.at(g));
  auto sorted = [](std::vector<int64_t> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  CHECK(sorted(e0) == iota_ids(50, 0));
  CHECK(sorted(e1) == iota_ids(50, 0));
  CHECK(e0 != e1);
  // Random access gives the same blocks as sequential access (a resumed run starts mid-epoch).
  CHECK(again.at(73) == e1[23]);
  CHECK(again.at(3) == e0[3]);
  int same = 0;
  for (uint64_t g = 0; g < 50; ++g) same += other.at(g) == e0[g];
  CHECK(same < 10);
}

TEST_CASE("corpus: the shared recipes' text gives the token and block counts of pretraining.md",
          "[pretrain][corpus][recipe]") {
  const auto root = lora_test::data("");
  LORA_REQUIRE_PATH(lora_test::data("corpus/reuters21578/reuters21578_lewissplit_train.txt"));
  LORA_REQUIRE_PATH(lora_test::data("tokenizers/bert-base-uncased/vocab.txt"));
  LORA_REQUIRE_PATH(lora_test::data("tokenizers/gpt2/vocab.json"));
  LORA_REQUIRE_PATH(lora_test::data("agnews/train_subset_14995.csv"));
  // DistilBERT: Reuters train, WikiText-103 head, State of the Union; 3,469,760 tokens, 27,537
  // blocks of 126 + [CLS] [SEP].
  const text::WordPieceTokenizer wp(lora_test::data("tokenizers/bert-base-uncased/vocab.txt"));
  std::vector<data::TextSource> bert_src;
  for (const char* f : {"corpus/reuters21578/reuters21578_lewissplit_train.txt",
                        "corpus/wikitext103_train_head/wiki.train.tokens.head.txt",
                        "corpus/us_presidential_addresses/us_state_of_the_union_1945-2006.txt"})
    bert_src.push_back(data::parse_text_source(f, root));
  const auto bert = data::token_stream(bert_src, {}, [&](const std::string& s) { return wp.encode(s, false); },
                                       data::Separator::none);
  // pretraining.md states 3,469,760 tokens; this pipeline gives 2 fewer (0.6 ppm), a difference
  // not traced: the text rules (1,503 WikiText headings dropped, escapes undone) and the file order
  // are as stated there, and the block count and GPT-2's token count below agree exactly. It is
  // pinned here so that any change to the pipeline shows.
  std::printf("  DistilBERT recipe text: %zu tokens (pretraining.md: 3,469,760), %lld texts\n", bert.ids.size(),
              static_cast<long long>(bert.texts));
  CHECK(bert.ids.size() == 3469758);
  CHECK(data::cut_blocks(bert.ids, 128, wp.cls_id(), wp.sep_id()).count() == 27537);
  // GPT-2: AG-News rows 10,001-14,995, <|endoftext|> after each; 263,178 tokens, 1,028 blocks of 256.
  const text::BpeTokenizer bpe(lora_test::data("tokenizers/gpt2/vocab.json"), lora_test::data("tokenizers/gpt2/merges.txt"));
  const auto gpt = data::token_stream({data::parse_text_source("agnews/train_subset_14995.csv:10001-14995", root)}, {},
                                      [&](const std::string& s) { return bpe.encode(s); }, data::Separator::eos,
                                      bpe.eos_id());
  std::printf("  GPT-2 recipe text: %zu tokens (pretraining.md: 263,178)\n", gpt.ids.size());
  CHECK(gpt.texts == 4995);
  CHECK(gpt.ids.size() == 263178);
  CHECK(data::cut_blocks(gpt.ids, 256).count() == 1028);
}

// ---------------------------------------------------------------------------------------------
// MLM masking

TEST_CASE("masking: 15% of non-special tokens chosen, 80/10/10, specials never, on 2M tokens",
          "[pretrain][masking]") {
  // Blocks of 128 as the recipe frames them ([CLS] ... [SEP]), with some [PAD], [UNK] and
  // [MASK] in the text: ~6% special tokens.
  const int64_t V = 30522, n = 2'000'000;
  pretrain::MaskingOptions o;
  o.special_ids = {0, 100, 101, 102, 103};
  std::vector<int64_t> ids(static_cast<size_t>(n));
  pretrain::MaskRng data_rng(42);
  for (int64_t i = 0; i < n; ++i) {
    const auto t = i % 128;
    int64_t id = 1000 + static_cast<int64_t>(data_rng.below(V - 1000));
    if (t == 0) id = 101;
    else if (t == 127) id = 102;
    else if (t % 50 == 7) id = 100;
    else if (t % 61 == 5) id = 0;
    else if (t % 97 == 3) id = 103;
    ids[static_cast<size_t>(i)] = id;
  }
  const std::set<int64_t> special(o.special_ids.begin(), o.special_ids.end());
  int64_t non_special = 0;
  for (const auto id : ids) non_special += special.count(id) == 0;

  pretrain::MaskRng rng(1234);
  const auto m = pretrain::mask_tokens(ids, o, rng);
  REQUIRE(m.positions.size() == m.labels.size());
  REQUIRE(m.positions.size() == m.kinds.size());
  int64_t masked = 0, random = 0, unchanged = 0, special_chosen = 0, changed_outside = 0, random_sum = 0, bad_labels = 0;
  std::vector<int64_t> random_bins(10, 0);
  std::vector<bool> chosen(static_cast<size_t>(n), false);
  for (size_t k = 0; k < m.positions.size(); ++k) {
    const auto i = static_cast<size_t>(m.positions[k]);
    chosen[i] = true;
    bad_labels += m.labels[k] != ids[i];
    special_chosen += special.count(ids[i]);
    // Observed from the inputs, as a model sees them: [MASK], another id, or the same id.
    if (m.inputs[i] == o.mask_id) {
      ++masked;
    } else if (m.inputs[i] != ids[i]) {
      ++random;
      random_sum += m.inputs[i];
      ++random_bins[static_cast<size_t>(m.inputs[i] * 10 / V)];
    } else {
      ++unchanged;
    }
  }
  for (int64_t i = 0; i < n; ++i) changed_outside += !chosen[static_cast<size_t>(i)] && m.inputs[static_cast<size_t>(i)] != ids[static_cast<size_t>(i)];
  const auto N = static_cast<double>(m.positions.size());
  const double chosen_share = N / static_cast<double>(non_special);
  std::printf("  masking: %lld non-special tokens, chosen %.5f (0.15), of them masked %.5f (0.8), random %.5f (0.1), "
              "unchanged %.5f (0.1); specials chosen %lld; mean random id %.1f (%.1f)\n",
              static_cast<long long>(non_special), chosen_share, masked / N, random / N, unchanged / N,
              static_cast<long long>(special_chosen), static_cast<double>(random_sum) / static_cast<double>(random),
              (V - 1) / 2.0);
  // Tolerances: about 6 standard deviations of each share at these counts (1.9M draws for the
  // choice: sd 0.00026; ~280k chosen: sd 0.00076 for 80%, 0.00057 for 10%).
  CHECK(std::abs(chosen_share - 0.15) < 0.0016);
  CHECK(std::abs(masked / N - 0.8) < 0.005);
  CHECK(std::abs(random / N - 0.1) < 0.0035);
  CHECK(std::abs(unchanged / N - 0.1) < 0.0035);
  CHECK(special_chosen == 0);
  CHECK(changed_outside == 0);
  CHECK(bad_labels == 0);  // the labels are the original ids
  // Random ids are uniform over the whole vocabulary: each tenth of [0, V) gets a tenth of them.
  for (const auto c : random_bins) CHECK(std::abs(static_cast<double>(c) / static_cast<double>(random) - 0.1) < 0.01);
  CHECK(std::abs(static_cast<double>(random_sum) / static_cast<double>(random) - (V - 1) / 2.0) < 0.02 * V);

  // The same seed draws the same masks; another seed others.
  pretrain::MaskRng same(1234), other(1235);
  const std::vector<int64_t> head(ids.begin(), ids.begin() + 10000);
  const auto a = pretrain::mask_tokens(head, o, same);
  pretrain::MaskRng same2(1234);
  CHECK(pretrain::mask_tokens(head, o, same2).inputs == a.inputs);
  CHECK(pretrain::mask_tokens(head, o, other).inputs != a.inputs);
  // An id outside the vocabulary is an error that says so.
  pretrain::MaskRng r(1);
  CHECK(contains(error_of<examples::DataError>([&] { pretrain::mask_tokens({5, V}, o, r); }), "outside the vocabulary"));
}

TEST_CASE("masking: the MLM batch's bag-of-words targets count the block's tokens except [CLS] [SEP] [PAD]",
          "[pretrain][masking]") {
  pretrain::MaskingOptions o;
  o.probability = 0;  // nothing chosen: inputs stay the ids
  o.special_ids = {0, 100, 101, 102, 103};
  pretrain::MaskRng rng(3);
  const std::vector<int64_t> ids = {101, 7, 7, 9, 102, 0, 101, 5, 102, 0, 0, 0};
  const auto b = pretrain::make_mlm_batch(ids, 2, 6, o, rng, {101, 102, 0});
  CHECK(b.positions.size(0) == 0);
  CHECK(torch::equal(b.input_ids, torch::tensor(ids).view({2, 6})));
  const auto w = b.bow_weights;
  CHECK(w[0][1].item<float>() == Approx(1.0 / 3));
  CHECK(w[0][3].item<float>() == Approx(1.0 / 3));
  CHECK(w[0][0].item<float>() == 0);
  CHECK(w[0][5].item<float>() == 0);
  CHECK(w[1][1].item<float>() == Approx(1.0));
  CHECK(w.sum().item<float>() == Approx(2.0));
}

// ---------------------------------------------------------------------------------------------
// Initialisation, AdamW, schedule

TEST_CASE("recipe: warm-up then cosine to 0.05 of the peak, as pretraining.md states it", "[pretrain][recipe]") {
  const pretrain::Schedule s{2400, 120, 0.05};
  CHECK(s.factor(0) == 0.0);  // HF's LambdaLR: the first step runs at 0
  CHECK(s.factor(60) == Approx(0.5));
  CHECK(s.factor(120) == Approx(1.0));
  CHECK(s.factor(700) == Approx(0.856).margin(0.002));  // "about 0.86 of the peak" at step 700
  CHECK(s.factor(1260) == Approx(0.525));                // half-way down the cosine
  CHECK(s.factor(2399) == Approx(0.05).margin(1e-5));
  CHECK(s.factor(5000) == Approx(0.05));
}

TEST_CASE("recipe: AdamW gives torch::optim::AdamW's updates, decaying only tensors of >= 2 dimensions",
          "[pretrain][recipe]") {
  torch::manual_seed(0);
  auto w = torch::randn({5, 3}), b = torch::randn({5});
  auto w2 = w.clone(), b2 = b.clone();
  w.set_requires_grad(true);
  b.set_requires_grad(true);
  w2.set_requires_grad(true);
  b2.set_requires_grad(true);
  pretrain::AdamW mine({{"w", w}, {"b", b}}, pretrain::AdamWSettings{});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{w2}, std::make_unique<torch::optim::AdamWOptions>(
                                                         torch::optim::AdamWOptions(1e-2).weight_decay(0.01)));
  groups.emplace_back(std::vector<torch::Tensor>{b2}, std::make_unique<torch::optim::AdamWOptions>(
                                                         torch::optim::AdamWOptions(1e-2).weight_decay(0.0)));
  torch::optim::AdamW theirs(std::move(groups), torch::optim::AdamWOptions(1e-2));
  const auto x = torch::randn({4, 3});
  for (int step = 0; step < 5; ++step) {
    mine.zero_grad();
    theirs.zero_grad();
    (torch::tanh(x.matmul(w.t()) + b).pow(2).sum()).backward();
    (torch::tanh(x.matmul(w2.t()) + b2).pow(2).sum()).backward();
    mine.step(1e-2);
    theirs.step();
  }
  CHECK(lora_test::allclose(w, w2, 0, 1e-6, "AdamW weight after 5 steps vs torch::optim::AdamW"));
  CHECK(lora_test::allclose(b, b2, 0, 1e-6, "AdamW bias after 5 steps vs torch::optim::AdamW"));
  CHECK(mine.slots()[0].decay);
  CHECK_FALSE(mine.slots()[1].decay);
  CHECK(mine.slots()[0].steps == 5);
}

TEST_CASE("recipe: HF initialisation, tied weights counted once", "[pretrain][recipe]") {
  SECTION("DistilBERT") {
    models::DistilBertConfig c;
    c.vocab_size = 3000;
    c.dim = 64;
    c.n_layers = 2;
    c.n_heads = 2;
    c.hidden_dim = 128;
    c.max_position_embeddings = 64;
    pretrain::Base base(c, {});
    base.init(5);
    auto& m = *base.distilbert();
    const auto params = lora::unique_named_parameters(m);
    std::set<std::string> names;
    for (const auto& [n, p] : params) names.insert(n);
    CHECK(names.count("distilbert.embeddings.word_embeddings.weight") == 1);
    CHECK(names.count("vocab_projector.weight") == 0);  // the same tensor, listed once
    CHECK(m.vocab_projector->weight.is_same(m.distilbert->embeddings->word_embeddings->weight));
    const auto& we = m.distilbert->embeddings->word_embeddings->weight;
    CHECK(we[0].abs().max().item<double>() == 0);  // [PAD]'s row
    CHECK(we.std().item<double>() == Approx(0.02).epsilon(0.02));
    CHECK(m.vocab_layer_norm->weight.eq(1).all().item<bool>());
    CHECK(m.vocab_projector->bias.eq(0).all().item<bool>());
    CHECK(m.distilbert->transformer->layer[0]->as<models::DistilBertBlockImpl>()->ffn->lin1->bias.eq(0).all().item<bool>());
    // Another seed, other weights; the same seed, the same.
    pretrain::Base again(c, {}), other(c, {});
    again.init(5);
    other.init(6);
    CHECK(torch::equal(again.distilbert()->vocab_transform->weight, m.vocab_transform->weight));
    CHECK_FALSE(torch::equal(other.distilbert()->vocab_transform->weight, m.vocab_transform->weight));
  }
  SECTION("GPT-2: c_proj at 0.02 / sqrt(2 n_layer)") {
    models::GPT2Config c;
    c.vocab_size = 3000;
    c.n_embd = 128;
    c.n_layer = 8;
    c.n_head = 2;
    c.n_inner = 512;
    c.n_positions = 64;
    pretrain::Base base(c, {});
    base.init(1);
    auto& m = *base.gpt2();
    auto* block = m.transformer->h[0]->as<models::GPT2BlockImpl>();
    CHECK(block->mlp->c_proj->weight.std().item<double>() == Approx(0.02 / 4).epsilon(0.05));
    CHECK(block->attn->c_proj->weight.std().item<double>() == Approx(0.02 / 4).epsilon(0.05));
    CHECK(block->attn->c_attn->weight.std().item<double>() == Approx(0.02).epsilon(0.05));
    CHECK(block->ln_1->weight.eq(1).all().item<bool>());
    CHECK(m.lm_head->weight.is_same(m.transformer->wte->weight));
  }
}

// ---------------------------------------------------------------------------------------------
// The program

TEST_CASE("pretrain: a tiny DistilBERT run writes a Hub folder that loads back with the same logits",
          "[programs][pretrain]") {
  LORA_REQUIRE_PATH(lora_test::data("corpus/wikitext103_train_head/wiki.train.tokens.head.txt"));
  LORA_REQUIRE_PATH(lora_test::data("tokenizers/bert-base-uncased/vocab.txt"));
  const auto dir = lora_test::temp_dir("pretrain_bert");
  const auto out = dir / "base";
  const auto r = lora_test::run_program(tiny_args("distilbert", out));
  INFO(r.out);
  REQUIRE(r.exit_code() == 0);
  const double printed = number_after(r.out, "max \\|logit diff\\|");
  std::cout << "  distilbert: the program's own reload check, max |logit diff| = " << printed << "\n";
  CHECK(printed <= 1e-5);
  for (const char* f : {"config.json", "model.safetensors", "vocab.txt", "checkpoint.safetensors", "curve.json"})
    CHECK(fs::exists(out / f));

  // The folder through the loaders the other programs use: MLM (lora_inspect), classification (agnews_sweep).
  auto loaded = models::load_distilbert_mlm(out.string());
  CHECK(loaded.config.dim == 16);
  CHECK(loaded.config.n_layers == 1);
  CHECK(loaded.config.vocab_size == 30522);
  CHECK(loaded.report.missing.empty());
  CHECK(loaded.report.unused.empty());
  const auto cls = models::load_distilbert(out.string(), 4, 1);
  CHECK(cls.report.initialized.size() == 4);  // pre_classifier and classifier, weight and bias
  const text::WordPieceTokenizer tok(out / "vocab.txt");
  CHECK(tok.vocab_size() == 30522);

  // The model as the program held it (the checkpoint's tensors) gives the folder's logits.
  models::DistilBertForMaskedLM held(loaded.config);
  load_checkpoint_params(*held, out / "checkpoint.safetensors");
  held->eval();
  loaded.model->eval();
  torch::NoGradGuard no_grad;
  const auto ids = some_ids(3, 32, 30522, 9);
  CHECK(lora_test::allclose(loaded.model->forward(ids).logits, held->forward(ids).logits, 0, 1e-6,
                            "distilbert: Hub folder logits vs the trained model's"));
  // It trained: the weights moved away from the initialisation.
  pretrain::Base init(loaded.config, {});
  init.init(0);
  CHECK((init.distilbert()->vocab_transform->weight - loaded.model->vocab_transform->weight).abs().max().item<double>() > 1e-4);

  const auto curve = lora::read_json<nlohmann::json>(out / "curve.json");
  CHECK(curve.at("finished") == true);
  REQUIRE(curve.at("steps").size() == 6);
  for (const auto& s : curve.at("steps")) {
    CHECK(std::isfinite(s.at("loss").get<double>()));
    CHECK(s.at("loss").get<double>() == Approx(s.at("lm").get<double>() + s.at("bow").get<double>()).epsilon(1e-6));
  }
  CHECK(curve.at("steps")[0].at("lr").get<double>() == 0.0);
  REQUIRE(curve.at("evals").size() == 3);  // steps 0, 3, 6
  for (const auto& e : curve.at("evals")) {
    CHECK(e.at("cls_spread").get<double>() > 0);
    CHECK(std::isfinite(e.at("held_out_loss").get<double>()));
  }
  // An untrained model of this vocabulary: MLM loss near ln 30522 = 10.3.
  CHECK(curve.at("evals")[0].at("held_out_lm").get<double>() == Approx(std::log(30522.0)).margin(0.5));
  fs::remove_all(dir);
}

TEST_CASE("pretrain: a tiny GPT-2 run writes a Hub folder that loads back with the same logits", "[programs][pretrain]") {
  LORA_REQUIRE_PATH(lora_test::data("agnews/train_subset_14995.csv"));
  LORA_REQUIRE_PATH(lora_test::data("tokenizers/gpt2/vocab.json"));
  const auto dir = lora_test::temp_dir("pretrain_gpt2");
  const auto out = dir / "base";
  const auto r = lora_test::run_program(tiny_args("gpt2", out));
  INFO(r.out);
  REQUIRE(r.exit_code() == 0);
  const double printed = number_after(r.out, "max \\|logit diff\\|");
  std::cout << "  gpt2: the program's own reload check, max |logit diff| = " << printed << "\n";
  CHECK(printed <= 1e-5);
  for (const char* f : {"config.json", "model.safetensors", "vocab.json", "merges.txt"}) CHECK(fs::exists(out / f));

  auto loaded = models::load_gpt2(out.string());  // what wikitext_sweep and lora_inspect call
  CHECK(loaded.config.n_embd == 16);
  CHECK(loaded.config.n_positions == 32);
  CHECK(loaded.config.vocab_size == 50257);
  CHECK(loaded.report.unused.empty());
  const text::BpeTokenizer tok(out / "vocab.json", out / "merges.txt");
  CHECK(tok.eos_id() == 50256);

  models::GPT2LMHeadModel held(loaded.config);
  load_checkpoint_params(*held, out / "checkpoint.safetensors");
  held->eval();
  loaded.model->eval();
  torch::NoGradGuard no_grad;
  const auto ids = some_ids(2, 32, 50257, 4);
  CHECK(lora_test::allclose(loaded.model->forward(ids), held->forward(ids), 0, 1e-6,
                            "gpt2: Hub folder logits vs the trained model's"));
  const auto curve = lora::read_json<nlohmann::json>(out / "curve.json");
  REQUIRE(curve.at("steps").size() == 6);
  CHECK(curve.at("evals")[0].at("held_out_lm").get<double>() == Approx(std::log(50257.0)).margin(0.5));
  CHECK(curve.at("evals").back().at("cls_spread").get<double>() > 0);
  fs::remove_all(dir);
}

TEST_CASE("pretrain: killed and resumed, or stopped by --max-steps and resumed, gives the uninterrupted curve",
          "[programs][pretrain]") {
  LORA_REQUIRE_PATH(lora_test::data("corpus/wikitext103_train_head/wiki.train.tokens.head.txt"));
  LORA_REQUIRE_PATH(lora_test::data("tokenizers/bert-base-uncased/vocab.txt"));
  const auto dir = lora_test::temp_dir("pretrain_resume");
  const auto whole = lora_test::run_program(tiny_args("distilbert", dir / "whole"));
  REQUIRE(whole.exit_code() == 0);
  const auto reference = lora::read_json<nlohmann::json>(dir / "whole" / "curve.json");

  // Killed after step 5 with the last checkpoint at step 4: the rerun goes back to step 4.
  const auto killed = lora_test::run_program(tiny_args("distilbert", dir / "killed", {{"--checkpoint-every", "2"}, {"--kill-after-step", "5"}}));
  CHECK(killed.exit_code() == 137);
  REQUIRE(fs::exists(dir / "killed" / "checkpoint.safetensors"));
  CHECK(pretrain::read_state((dir / "killed" / "checkpoint.safetensors").string()).step == 4);
  CHECK_FALSE(fs::exists(dir / "killed" / "model.safetensors"));
  const auto resumed = lora_test::run_program(tiny_args("distilbert", dir / "killed", {{"--checkpoint-every", "2"}}));
  INFO(resumed.out);
  REQUIRE(resumed.exit_code() == 0);
  CHECK(contains(resumed.out, "resuming from"));
  const auto after_kill = lora::read_json<nlohmann::json>(dir / "killed" / "curve.json");
  const double d_loss = curve_diff(reference, after_kill, "steps", "loss");
  const double d_norm = curve_diff(reference, after_kill, "steps", "grad_norm");
  const double d_eval = curve_diff(reference, after_kill, "evals", "held_out_loss");
  const double d_spread = curve_diff(reference, after_kill, "evals", "cls_spread");
  std::cout << "  killed at step 5, resumed from step 4: max |diff| vs uninterrupted: loss " << d_loss << ", grad norm "
            << d_norm << ", held-out loss " << d_eval << ", [CLS] spread " << d_spread << "\n";
  CHECK(d_loss <= 1e-6);
  CHECK(d_norm <= 1e-5);
  CHECK(d_eval <= 1e-6);
  CHECK(d_spread <= 1e-6);

  // Stopped by --max-steps 2, then run to the end.
  REQUIRE(lora_test::run_program(tiny_args("distilbert", dir / "stopped", {{"--max-steps", "2"}})).exit_code() == 0);
  CHECK(lora::read_json<nlohmann::json>(dir / "stopped" / "curve.json").at("finished") == false);
  CHECK(fs::exists(dir / "stopped" / "model.safetensors"));  // the model so far, usable
  REQUIRE(lora_test::run_program(tiny_args("distilbert", dir / "stopped")).exit_code() == 0);
  const auto after_stop = lora::read_json<nlohmann::json>(dir / "stopped" / "curve.json");
  const double d_stop = curve_diff(reference, after_stop, "steps", "loss");
  std::cout << "  stopped by --max-steps 2, resumed: max |loss diff| vs uninterrupted " << d_stop << "\n";
  CHECK(d_stop <= 1e-6);
  CHECK(after_stop.at("finished") == true);
  // The final weights too.
  const lora::safetensors::File a((dir / "whole" / "model.safetensors").string()),
      b((dir / "stopped" / "model.safetensors").string());
  double d_weights = 0;
  for (const auto& t : a.tensors())
    d_weights = std::max(d_weights, (a.tensor(t.name) - b.tensor(t.name)).abs().max().item<double>());
  std::cout << "  final weights, stopped and resumed vs uninterrupted: max |diff| " << d_weights << "\n";
  CHECK(d_weights <= 1e-6);

  // Other recipe flags than the checkpoint's: refused, naming each, nothing written.
  const auto refused = lora_test::run_program_stderr(tiny_args("distilbert", dir / "stopped", {{"--lr", "2e-3"}, {"--dim", "32"}, {"--heads", "4"}}));
  CHECK(refused.exit_code() == 2);
  CHECK(contains(refused.err, "--lr: checkpoint 0.001, this run 0.002"));
  CHECK(contains(refused.err, "--dim: checkpoint 16, this run 32"));
  CHECK(contains(refused.err, "another --out"));
  // A finished run rerun as it was: nothing more to do, the same folder.
  const auto again = lora_test::run_program(tiny_args("distilbert", dir / "stopped"));
  CHECK(again.exit_code() == 0);
  CHECK(lora::read_json<nlohmann::json>(dir / "stopped" / "curve.json").at("steps").size() == 6);
  fs::remove_all(dir);
}

TEST_CASE("pretrain: wrong flags and missing files stop it before training, saying what to do", "[programs][pretrain]") {
  const auto dir = lora_test::temp_dir("pretrain_errors");
  auto r = lora_test::run_program_stderr(tiny_args("distilbert", dir / "a", {{"--dim", "18"}, {"--heads", "4"}}));
  CHECK(r.exit_code() == 2);
  CHECK(contains(r.err, "--heads 4 does not divide --dim 18"));
  r = lora_test::run_program_stderr(tiny_args("distilbert", dir / "b", {{"--layout", "bert"}}));
  CHECK(r.exit_code() == 2);
  r = lora_test::run_program_stderr(std::string(LORA_PRETRAIN_PATH) + " --out " + (dir / "c").string() +
                                    " --shared " + (dir / "nowhere").string());
  CHECK(r.exit_code() == 1);
  CHECK(contains(r.err, (dir / "nowhere" / "data" / "tokenizers" / "bert-base-uncased" / "vocab.txt").string()));
  CHECK_FALSE(fs::exists(dir / "c"));
  // A folder holding some other model is not overwritten.
  fs::create_directories(dir / "d");
  std::ofstream(dir / "d" / "config.json") << "{}";
  r = lora_test::run_program_stderr(tiny_args("distilbert", dir / "d"));
  CHECK(r.exit_code() == 2);
  CHECK(contains(r.err, "no pretrain checkpoint"));
  fs::remove_all(dir);
}

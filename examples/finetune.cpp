// finetune: LoRA fine-tuning from start to finish, in one file. Start here to learn the library.
//
//   1. load a pretrained DistilBERT from a Hugging Face Hub folder (config.json,
//      model.safetensors, vocab.txt), with a new 4-class head;
//   2. tokenize AG-News (news title + description -> World, Sports, Business, Sci/Tech);
//   3. add LoRA adapters with lora::inject: every attention and feed-forward Linear layer gets
//      A (r, in) and B (out, r), the base weights are frozen, the new head trains whole;
//   4. train the adapters with AdamW, printing loss, speed and ETA;
//   5. measure test accuracy;
//   6. merge the adapters into the weights (inference then costs what the base model costs);
//   7. save them as a PEFT adapter folder (adapter_config.json + adapter_model.safetensors,
//      which Python's PEFT loads too) and load that folder into a fresh model, which must give
//      the same logits and accuracy.
//
// From the repository root, with the shared data beside the checkout (a few minutes on a CPU):
//
//   finetune --model-dir ../shared/fixtures/distilbert_news_small --data-dir ../shared/data --out out/finetune
//
// With scripts/fetch-assets.sh's distilbert-base-uncased (--model-dir ~/.cache/lora/models/
// distilbert-base-uncased) the same runs, about 30 times slower per step. The study programs
// (agnews_sweep, wikitext_sweep) do this once per grid point through a harness of their own
// (examples/common/sweep/); nothing here depends on it.
#include <CLI/CLI.hpp>
#include <lora/lora.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "data/agnews.hpp"
#include "data/batching.hpp"
#include "errors.hpp"
#include "models/checkpoint.hpp"
#include "models/export.hpp"
#include "program_main.hpp"
#include "text/wordpiece.hpp"

namespace fs = std::filesystem;

namespace {

struct Flags {
  std::string model_dir, data_dir, out = "out/finetune";
  int64_t rank = 16;
  double alpha = 32;
  double lr = 2e-3;
  double weight_decay = 0.01;
  int64_t epochs = 2;
  int64_t steps = 0;  // 0: every step of --epochs
  int64_t rows = 2000;
  int64_t test_rows = 2000;
  int64_t batch_size = 32;
  int64_t max_len = 128;
  uint64_t seed = 1;
  int threads = 0;
};

/// $LORA_SHARED_DIR, else ../shared (the shared data beside the checkout, as the tests use it).
std::string shared_dir() {
  const char* env = std::getenv("LORA_SHARED_DIR");
  return env && *env ? env : "../shared";
}

/// Token ids (with [CLS] and [SEP], at most max_len) and the class of each row.
struct Encoded {
  std::vector<std::vector<int64_t>> ids;
  std::vector<int64_t> labels;
};

Encoded encode(const text::WordPieceTokenizer& tok, const std::vector<data::Example>& rows, int64_t max_len) {
  Encoded e;
  for (const auto& r : rows) {
    e.ids.push_back(tok.encode(r.text, /*add_special_tokens=*/true, static_cast<size_t>(max_len)));
    e.labels.push_back(r.label);
  }
  return e;
}

/// The batches of one pass over `e`: shuffled by `rng` for training, in file order otherwise;
/// each padded to its longest row, with an attention mask.
std::vector<data::Batch> batches_of(const Encoded& e, const Flags& f, int64_t pad_id, bool shuffle,
                                    std::mt19937_64& rng) {
  data::BatchOptions o;
  o.batch_size = shuffle ? f.batch_size : 4 * f.batch_size;
  o.max_len = f.max_len;
  o.pad_id = pad_id;
  o.shuffle = shuffle;
  std::vector<data::Batch> out;
  for (const auto& b : data::plan_batches(data::lengths_of(e.ids), o, rng))
    out.push_back(data::collate_classification(e.ids, e.labels, b, o));
  return out;
}

/// The logits (N, 4) of `model` on `batches`, in order: eval mode (no dropout), no gradients.
torch::Tensor logits_of(models::DistilBertForSequenceClassification& model, const std::vector<data::Batch>& batches) {
  torch::NoGradGuard no_grad;
  model->eval();
  std::vector<torch::Tensor> parts;
  for (const auto& b : batches) parts.push_back(model->forward(b.input_ids, b.attention_mask).logits);
  return torch::cat(parts);
}

/// Test accuracy (%) of `logits` (N, 4) against the labels of `batches`.
double accuracy(const torch::Tensor& logits, const std::vector<data::Batch>& batches) {
  std::vector<torch::Tensor> labels;
  for (const auto& b : batches) labels.push_back(b.labels);
  return 100.0 * (logits.argmax(1) == torch::cat(labels)).to(torch::kDouble).mean().item<double>();
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

std::string duration(double seconds) {
  if (!std::isfinite(seconds)) return "?";
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  return buf;
}

/// The progress line on stderr: "step 40/126 | loss 0.8123 | 11.8 steps/s | ETA 0m07s",
/// redrawn in place on a terminal, one line per tenth of the run in a log.
class ProgressLine {
 public:
  explicit ProgressLine(int64_t total) : total_(total), terminal_(::isatty(STDERR_FILENO) != 0) {}

  void update(int64_t step, double loss) {
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double rate = static_cast<double>(step) / elapsed;
    const bool last = step == total_;
    if (!terminal_ && !last && step * 10 / total_ == (step - 1) * 10 / total_) return;
    char line[160];
    std::snprintf(line, sizeof line, "step %lld/%lld | loss %.4f | %.1f steps/s | ETA %s",
                  static_cast<long long>(step), static_cast<long long>(total_), loss, rate,
                  duration(static_cast<double>(total_ - step) / rate).c_str());
    std::cerr << (terminal_ ? "\r\033[K" : "") << line << (terminal_ && !last ? "" : "\n") << std::flush;
  }

 private:
  int64_t total_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

/// Throws examples::FileError listing every path of `paths` that does not exist.
void require_files(const std::vector<fs::path>& paths) {
  std::string missing;
  for (const auto& p : paths)
    if (!fs::exists(p)) missing += "\n  " + p.string();
  if (!missing.empty())
    throw examples::FileError("missing files:" + missing +
                              "\nPass --model-dir (a Hub folder with config.json, model.safetensors and vocab.txt) "
                              "and --data-dir (holding agnews/), or fetch them with scripts/fetch-assets.sh.");
}

int run(const Flags& f) {
  if (f.threads > 0) torch::set_num_threads(f.threads);
  torch::manual_seed(f.seed);

  // 1-2. The data and the tokenizer.
  const fs::path model_dir(f.model_dir), agnews = fs::path(f.data_dir) / "agnews";
  const fs::path train_file = fs::exists(agnews / "train.csv") ? agnews / "train.csv" : agnews / "train_subset_14995.csv";
  require_files({model_dir / "config.json", model_dir / "model.safetensors", model_dir / "vocab.txt", train_file,
                 agnews / "test.csv"});
  const text::WordPieceTokenizer tok(model_dir / "vocab.txt");
  const auto pool = data::read_agnews(train_file);  // --rows of it, drawn with --seed
  if (static_cast<size_t>(f.rows) > pool.size())
    throw examples::UsageError("--rows: " + std::to_string(f.rows) + " is more than the " +
                               std::to_string(pool.size()) + " rows of " + train_file.string() + "; give at most " +
                               std::to_string(pool.size()) + ".");
  std::vector<data::Example> rows;
  for (const auto i : data::permutation(pool.size(), f.seed)) {
    if (rows.size() == static_cast<size_t>(f.rows)) break;
    rows.push_back(pool[i]);
  }
  const auto train = encode(tok, rows, f.max_len);
  auto test_rows = data::read_agnews(agnews / "test.csv");
  if (f.test_rows > 0 && static_cast<size_t>(f.test_rows) < test_rows.size())
    test_rows.resize(static_cast<size_t>(f.test_rows));
  const auto test = encode(tok, test_rows, f.max_len);
  std::mt19937_64 rng(f.seed);
  const auto test_batches = batches_of(test, f, tok.pad_id(), /*shuffle=*/false, rng);

  // 1. The pretrained model. The checkpoint has no classification head: a new one is drawn from --seed.
  auto [model, config, report] = models::load_distilbert(f.model_dir, /*num_labels=*/4, f.seed);
  if (f.max_len > config.max_position_embeddings)
    throw examples::UsageError("--max-len: " + std::to_string(f.max_len) + " is more than the " +
                               std::to_string(config.max_position_embeddings) + " positions of the model in " +
                               f.model_dir + "; give --max-len " + std::to_string(config.max_position_embeddings) +
                               " or less.");

  // 3. LoRA on every attention and feed-forward projection; the new head trains whole
  // (keep_trainable: PEFT's modules_to_save). Everything else is frozen.
  lora::Config cfg;
  cfg.rank = f.rank;
  cfg.alpha = f.alpha;  // scale s = alpha / rank (lora::scaling::alpha_over_rank, PEFT's default)
  cfg.targets = {"q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"};
  cfg.keep_trainable = {"pre_classifier", "classifier"};
  cfg.seed = f.seed;
  auto adapters = lora::inject(*model, cfg);
  std::cout << adapters.summary() << "\n";

  // 4. Training: AdamW over the adapters and the head.
  torch::optim::AdamW opt(adapters.parameters(), torch::optim::AdamWOptions(f.lr).weight_decay(f.weight_decay));
  const auto per_epoch = (static_cast<int64_t>(train.ids.size()) + f.batch_size - 1) / f.batch_size;
  const int64_t total = f.steps > 0 ? f.steps : f.epochs * per_epoch;
  std::cout << "training " << total << " steps (" << train.ids.size() << " rows, batch " << f.batch_size
            << ", LR " << f.lr << ")\n";
  ProgressLine progress(total);
  int64_t step = 0;
  while (step < total) {
    model->train();
    for (const auto& b : batches_of(train, f, tok.pad_id(), /*shuffle=*/true, rng)) {
      opt.zero_grad();
      const auto logits = model->forward(b.input_ids, b.attention_mask).logits;  // (B, 4)
      const auto loss = torch::nn::functional::cross_entropy(logits, b.labels);  // ()
      loss.backward();
      adapters.step(opt);  // opt.step(), and what plain torch::nn::Linear layers would need
      const double value = loss.item<double>();
      if (!std::isfinite(value))
        throw examples::DataError("the training loss became " + std::to_string(value) + " at step " +
                                  std::to_string(step + 1) + "; lower --lr (now " + std::to_string(f.lr) + ").");
      progress.update(++step, value);
      if (step == total) break;
    }
  }

  // 5. Test accuracy of the trained model (adapters applied on the fly).
  const auto trained = logits_of(model, test_batches);
  const double acc = accuracy(trained, test_batches);
  std::printf("test accuracy: %.2f%% (%zu rows)\n", acc, test.ids.size());

  // 6. Merge: W <- W + s B A in every adapted layer. Same outputs up to float rounding.
  adapters.merge();
  const auto merged = logits_of(model, test_batches);
  std::printf("merged: test accuracy %.2f%%, max |logit - trained logit| %.3g\n", accuracy(merged, test_batches),
              max_abs_diff(merged, trained));
  if (!(max_abs_diff(merged, trained) < 1e-3))
    throw examples::DataError("merging changed the logits by " + std::to_string(max_abs_diff(merged, trained)) +
                              " (more than 1e-3); this is a bug in lora::ModelAdapter::merge, please report it.");

  // 7. Save as PEFT does, then load into a fresh model whose own head is drawn from another seed:
  // only the file can make it agree with the trained model.
  lora::peft::SaveOptions save;
  save.mapping = models::distilbert_peft_mapping();
  save.task_type = "SEQ_CLS";
  save.base_model_name_or_path = f.model_dir;
  lora::peft::save(adapters, f.out, save);
  std::cout << "saved the adapter to " << f.out << "/ (" << lora::peft::kConfigFile << ", " << lora::peft::kWeightsFile
            << ")\n";
  auto fresh = models::load_distilbert(f.model_dir, /*num_labels=*/4, f.seed + 1).model;
  lora::peft::LoadOptions load;
  load.mapping = models::distilbert_peft_mapping();
  lora::peft::load(*fresh, f.out, load);
  const auto reloaded = logits_of(fresh, test_batches);
  const double reloaded_acc = accuracy(reloaded, test_batches), diff = max_abs_diff(reloaded, trained);
  std::printf("reloaded: test accuracy %.2f%%, max |logit - trained logit| %.3g\n", reloaded_acc, diff);
  if (reloaded_acc != acc || !(diff < 1e-5))
    throw examples::DataError("the adapter loaded from " + f.out + " gives other outputs than the trained model (test " +
                              "accuracy " + std::to_string(reloaded_acc) + "% vs " + std::to_string(acc) +
                              "%, max |logit difference| " + std::to_string(diff) +
                              "); this is a bug in lora::peft::save or load, please report it.");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  f.model_dir = shared_dir() + "/fixtures/distilbert_news_small";
  f.data_dir = shared_dir() + "/data";
  CLI::App app("finetune: LoRA on DistilBERT for AG-News: train, evaluate, merge, save and reload a PEFT adapter",
               "finetune");
  app.option_defaults()->always_capture_default();
  app.add_option("--model-dir", f.model_dir, "DistilBERT Hub folder: config.json, model.safetensors, vocab.txt");
  app.add_option("--data-dir", f.data_dir, "folder holding agnews/ (train.csv or train_subset_14995.csv, test.csv)");
  app.add_option("--out", f.out, "where to write the PEFT adapter folder");
  app.add_option("--rank", f.rank, "LoRA rank r")->check(CLI::PositiveNumber);
  app.add_option("--alpha", f.alpha, "LoRA alpha (scale = alpha / r)")->check(CLI::PositiveNumber);
  app.add_option("--lr", f.lr, "AdamW learning rate")->check(CLI::PositiveNumber);
  app.add_option("--weight-decay", f.weight_decay, "AdamW weight decay")->check(CLI::NonNegativeNumber);
  app.add_option("--epochs", f.epochs, "passes over the training rows")->check(CLI::PositiveNumber);
  app.add_option("--steps", f.steps, "stop after this many optimizer steps (0: all of --epochs)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--rows", f.rows, "training rows")->check(CLI::PositiveNumber);
  app.add_option("--test-rows", f.test_rows, "test rows, the first of test.csv (0: all 7,600)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", f.batch_size, "rows per training step")->check(CLI::PositiveNumber);
  app.add_option("--max-len", f.max_len, "tokens per row, at most (the model's positions bound it)")
      ->check(CLI::Range(int64_t{2}, int64_t{1 << 20}));
  app.add_option("--seed", f.seed, "seed of the data order, the new head and the adapters");
  app.add_option("--threads", f.threads, "CPU threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  return examples::program_main(app, argc, argv, "finetune", [&] { return run(f); });
}

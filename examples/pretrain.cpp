// pretrain: pretrains a small base model from plain text, with the recipe of the study's small
// bases (/work/shared/pretraining.md; docs/pretraining.md says how to run it):
//   --layout distilbert   DistilBertForMaskedLM: masked LM plus the bag-of-words objective at [CLS]
//   --layout gpt2         GPT2LMHeadModel: causal LM
// at any width, depth, heads and hidden size. It writes into --out a Hugging Face Hub folder
// (config.json, model.safetensors and the tokenizer's vocabulary files) that agnews_sweep,
// wikitext_sweep, finetune and lora_inspect load like any Hub model, a JSON curve (curve.json:
// every step's loss, and the held-out loss and [CLS] spread every --eval-every steps) and a
// checkpoint (checkpoint.safetensors, every --checkpoint-minutes): running the same command
// again continues from it, and refuses if the recipe's flags differ from the checkpoint's.
//
// Where things are: the text -> blocks pipeline is data/corpus.hpp, the MLM masking
// pretrain/masking.hpp, the losses and evaluation pretrain/objectives.hpp, initialisation,
// AdamW and the LR schedule pretrain/recipe.hpp, the checkpoint pretrain/state.hpp. This file
// holds the flags and the training loop.
//
//   pretrain --layout distilbert --out runs/distilbert-d128            # the recipe, 2,400 steps
//   pretrain --layout gpt2 --dim 256 --layers 6 --heads 8 --out runs/gpt2-d256
#include <CLI/CLI.hpp>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "data/corpus.hpp"
#include "errors.hpp"
#include "models/checkpoint.hpp"
#include "perf/allocator.hpp"
#include "perf/blas.hpp"
#include "program_main.hpp"
#include "pretrain/objectives.hpp"
#include "pretrain/recipe.hpp"
#include "pretrain/state.hpp"
#include "text/bpe.hpp"
#include "text/wordpiece.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using examples::str;

namespace {

struct Flags {
  std::string layout = "distilbert";
  // Where things are.
  std::string shared, data_dir, tokenizer_dir, out;
  // Text and blocks (0 / empty: the layout's recipe).
  std::vector<std::string> texts;
  std::string separator;
  int64_t block_size = 0;
  int64_t held_out = -1;
  std::string held_out_at;
  // Model.
  int64_t dim = 128, layers = 4, heads = 4, hidden = 0, positions = 0;
  double dropout = 0.1, attention_dropout = 0.1;
  // Objectives.
  double mlm_probability = 0.15, bow_weight = 1.0;
  // Optimisation.
  int64_t batch_size = 0, steps = 0;
  double lr = 1e-3, warmup = 0.05, min_lr_ratio = 0.05, weight_decay = 0.01, clip = 1.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  uint64_t seed = 0;
  // Running (not part of the recipe: they may change between a run and its resumption).
  int64_t max_steps = 0;
  double max_minutes = 0;
  double checkpoint_minutes = 5;
  int64_t checkpoint_every = 0;
  int64_t eval_every = 100;
  int64_t log_every = 10;
  int threads = 0;
  int64_t kill_after_step = 0;
};

/// The recipe defaults of each layout (/work/shared/pretraining.md), for the flags left unset.
void apply_layout_defaults(Flags& f) {
  const bool bert = f.layout == "distilbert";
  if (f.shared.empty()) {
    const char* env = std::getenv("LORA_SHARED_DIR");
    f.shared = env && *env ? env : "../shared";
  }
  if (f.data_dir.empty()) f.data_dir = (fs::path(f.shared) / "data").string();
  if (f.tokenizer_dir.empty())
    f.tokenizer_dir = (fs::path(f.data_dir) / "tokenizers" / (bert ? "bert-base-uncased" : "gpt2")).string();
  if (f.out.empty()) f.out = "runs/pretrain-" + f.layout;
  if (f.texts.empty())
    f.texts = bert ? std::vector<std::string>{"corpus/reuters21578/reuters21578_lewissplit_train.txt",
                                              "corpus/wikitext103_train_head/wiki.train.tokens.head.txt",
                                              "corpus/us_presidential_addresses/us_state_of_the_union_1945-2006.txt"}
                   : std::vector<std::string>{"agnews/train_subset_14995.csv:10001-14995"};
  if (f.separator.empty()) f.separator = bert ? "none" : "eos";
  if (f.block_size == 0) f.block_size = bert ? 128 : 256;
  if (f.held_out < 0) f.held_out = bert ? 64 : 32;
  if (f.held_out_at.empty()) f.held_out_at = bert ? "first" : "last";
  if (f.hidden == 0) f.hidden = 4 * f.dim;
  if (f.positions == 0) f.positions = f.block_size;
  if (f.batch_size == 0) f.batch_size = bert ? 32 : 2;
  if (f.steps == 0) f.steps = bert ? 2400 : 950;
}

/// Checks what the parser cannot: flags that must fit each other.
void check_flags(const Flags& f) {
  if (f.dim % f.heads != 0)
    throw examples::UsageError(str("--heads ", f.heads, " does not divide --dim ", f.dim,
                                   "; give a --heads that divides it (e.g. ", f.dim % 4 == 0 ? 4 : 1, ")."));
  if (f.positions < f.block_size)
    throw examples::UsageError(str("--positions ", f.positions, " is less than --block-size ", f.block_size,
                                   "; the model needs a position for every token of a block. Leave --positions out "
                                   "(it defaults to --block-size) or raise it."));
  if (f.held_out < 1)
    throw examples::UsageError(str("--held-out ", f.held_out, ": at least 1 block must be held out for the held-out ",
                                   "loss and the reload check (the recipe holds out 64 or 32)."));
  if (f.separator == "eos" && f.layout != "gpt2")
    throw examples::UsageError("--separator eos: the BERT vocabulary has no end-of-text token; use none or newline.");
}

/// The flags that define the run, recorded in the checkpoint and compared on resume. Paths and
/// the flags that only steer the run (--max-steps, --checkpoint-*, --eval-every, --threads, ...)
/// are left out.
json recipe_of(const Flags& f) {
  return {{"--layout", f.layout},
          {"--text", f.texts},
          {"--separator", f.separator},
          {"--block-size", f.block_size},
          {"--held-out", f.held_out},
          {"--held-out-at", f.held_out_at},
          {"--dim", f.dim},
          {"--layers", f.layers},
          {"--heads", f.heads},
          {"--hidden", f.hidden},
          {"--positions", f.positions},
          {"--dropout", f.dropout},
          {"--attention-dropout", f.attention_dropout},
          {"--mlm-probability", f.mlm_probability},
          {"--bow-weight", f.bow_weight},
          {"--batch-size", f.batch_size},
          {"--steps", f.steps},
          {"--lr", f.lr},
          {"--warmup", f.warmup},
          {"--min-lr-ratio", f.min_lr_ratio},
          {"--weight-decay", f.weight_decay},
          {"--clip", f.clip},
          {"--betas", {f.beta1, f.beta2}},
          {"--eps", f.eps},
          {"--seed", f.seed}};
}

std::string duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<long long>(seconds + 0.5);
  char buf[48];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, s / 60 % 60);
  else
    std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  return buf;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

/// The tokenizer of the layout, as data::Tokenize, and the special ids the recipe needs.
struct Vocabulary {
  data::Tokenize tokenize;
  int64_t size = 0;
  int64_t cls = -1, sep = -1, pad = -1, mask = -1, unk = -1, eos = -1;
  std::vector<std::string> files;  ///< copied into the Hub folder
};

Vocabulary load_vocabulary(const Flags& f) {
  const fs::path dir(f.tokenizer_dir);
  Vocabulary v;
  if (f.layout == "distilbert") {
    v.files = {"vocab.txt"};
  } else {
    v.files = {"vocab.json", "merges.txt"};
  }
  for (const auto& name : v.files)
    if (!fs::is_regular_file(dir / name))
      throw examples::FileError(str("--tokenizer-dir: ", (dir / name).string(), " does not exist. Point --tokenizer-dir at a "
                                    "folder holding ", f.layout == "distilbert" ? "vocab.txt (bert-base-uncased)" : "vocab.json and merges.txt (GPT-2)",
                                    ", or --shared at the shared folder (its data/tokenizers/ holds both)."));
  if (f.layout == "distilbert") {
    const text::WordPieceTokenizer tok(dir / "vocab.txt");
    v.tokenize = [tok](const std::string& s) { return tok.encode(s, /*add_special_tokens=*/false); };
    v.size = static_cast<int64_t>(tok.vocab_size());
    v.cls = tok.cls_id();
    v.sep = tok.sep_id();
    v.pad = tok.pad_id();
    v.mask = tok.mask_id();
    v.unk = tok.unk_id();
  } else {
    const text::BpeTokenizer tok(dir / "vocab.json", dir / "merges.txt");
    v.tokenize = [tok](const std::string& s) { return tok.encode(s); };
    v.size = static_cast<int64_t>(tok.vocab_size());
    v.eos = tok.eos_id();
  }
  return v;
}

/// The progress line on stderr, redrawn in place on a terminal, one line per --log-every steps
/// in a log: "step 40/2400 | loss 13.9012 (mlm 7.0131, bow 6.8881) | lr 3.3e-04 | 2,345 tok/s | ETA 41m10s".
class Progress {
 public:
  Progress(int64_t total, int64_t first_step) : total_(total), first_(first_step), terminal_(::isatty(STDERR_FILENO) != 0) {}

  void add(double loss, double lm, double bow) {
    loss_ += loss;
    lm_ += lm;
    bow_ += bow;
    ++n_;
  }

  void print(int64_t step, int64_t stop_at, double lr, double tokens, bool bert) {
    const double elapsed = seconds_since(start_);
    const double per_step = elapsed / static_cast<double>(std::max<int64_t>(1, step - first_));
    char line[256];
    const double n = static_cast<double>(std::max<int64_t>(1, n_));
    if (bert)
      std::snprintf(line, sizeof line, "step %lld/%lld | loss %.4f (mlm %.4f, bow %.4f) | lr %.2e | %.0f tok/s | ETA %s",
                    static_cast<long long>(step), static_cast<long long>(total_), loss_ / n, lm_ / n, bow_ / n, lr,
                    tokens / elapsed, duration(per_step * static_cast<double>(stop_at - step)).c_str());
    else
      std::snprintf(line, sizeof line, "step %lld/%lld | loss %.4f | lr %.2e | %.0f tok/s | ETA %s",
                    static_cast<long long>(step), static_cast<long long>(total_), loss_ / n, lr, tokens / elapsed,
                    duration(per_step * static_cast<double>(stop_at - step)).c_str());
    std::cerr << (terminal_ ? "\r\033[K" : "") << line << (terminal_ ? "" : "\n") << std::flush;
    loss_ = lm_ = bow_ = 0;
    n_ = 0;
  }

  /// Ends a redrawn line before other output.
  void break_line() {
    if (terminal_) std::cerr << "\n";
  }

  double tokens_per_second(double tokens) const { return tokens / seconds_since(start_); }

  /// Starts the clock (after the first evaluation): speed and ETA count training steps and the
  /// evaluations between them.
  void restart() { start_ = std::chrono::steady_clock::now(); }

 private:
  int64_t total_, first_;
  bool terminal_;
  double loss_ = 0, lm_ = 0, bow_ = 0;
  int64_t n_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

/// Set by SIGINT / SIGTERM: the loop stops after the step, writing a checkpoint.
volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_signal(int sig) { g_signal = sig; }

/// Copies `from` to `to` atomically (a temporary file renamed over it).
void copy_file_atomic(const fs::path& from, const fs::path& to) {
  const fs::path tmp = to.string() + ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (!ec) fs::permissions(tmp, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add, ec);
  if (!ec) fs::rename(tmp, to, ec);
  if (ec) {
    fs::remove(tmp);
    throw examples::FileError(str("cannot copy ", from.string(), " to ", to.string(), ": ", ec.message()));
  }
}

/// Reloads the Hub folder through the loaders the other programs use and compares its logits with
/// the in-memory model's on the first held-out blocks: returns max |difference|.
double reload_check(pretrain::Base& base, const std::string& dir, const data::Blocks& held_out) {
  torch::NoGradGuard no_grad;
  const int64_t n = std::min<int64_t>(4, held_out.count()), T = held_out.size;
  auto input = torch::tensor(std::vector<int64_t>(held_out.block(0), held_out.block(0) + n * T), torch::kLong).view({n, T});
  base.module().eval();
  const auto mine = base.logits(input);
  base.module().train();
  torch::Tensor theirs;
  if (base.is_distilbert()) {
    auto loaded = models::load_distilbert_mlm(dir).model;
    loaded->eval();
    theirs = loaded->forward(input).logits;
  } else {
    auto loaded = models::load_gpt2(dir).model;
    loaded->eval();
    theirs = loaded->forward(input);
  }
  return (mine - theirs).abs().max().item<double>();
}

int run(Flags f) {
  apply_layout_defaults(f);
  check_flags(f);
  if (f.threads > 0) {
    torch::set_num_threads(f.threads);
    perf::set_blas_threads(f.threads);
  }
  perf::use_caching_cpu_allocator();
  if (const auto blas = perf::blas_check(); blas.slow()) std::cerr << blas.warning << "\n";
  const bool bert = f.layout == "distilbert";
  const fs::path out(f.out), checkpoint = out / "checkpoint.safetensors";
  const json recipe = recipe_of(f);

  // A checkpoint in --out: this run continues it, if the recipe is the same.
  std::optional<pretrain::TrainingState> resumed;
  if (fs::exists(checkpoint)) {
    resumed = pretrain::read_state(checkpoint.string());
    const auto diff = pretrain::recipe_differences(resumed->recipe, recipe);
    if (!diff.empty()) {
      std::string lines;
      for (const auto& d : diff) lines += "\n  " + d;
      throw examples::UsageError(str("--out ", f.out, " holds a checkpoint of another recipe (step ", resumed->step,
                                     "); these flags differ:", lines,
                                     "\nRerun with the checkpoint's flags to continue it, or give another --out to start "
                                     "a new run."));
    }
  } else if (fs::exists(out / "model.safetensors") || fs::exists(out / "config.json")) {
    throw examples::UsageError(str("--out ", f.out, " holds a model (config.json or model.safetensors) but no pretrain "
                                   "checkpoint; it was not written by this program. Give another --out."));
  }

  // The text -> blocks (data/corpus.hpp).
  const auto vocab = load_vocabulary(f);
  std::vector<data::TextSource> sources;
  for (const auto& spec : f.texts) sources.push_back(data::parse_text_source(spec, f.data_dir));
  const auto separator = f.separator == "eos" ? data::Separator::eos
                         : f.separator == "newline" ? data::Separator::newline : data::Separator::none;
  const auto stream = data::token_stream(sources, data::CleanupRules{}, vocab.tokenize, separator, vocab.eos);
  const auto blocks = bert ? data::cut_blocks(stream.ids, f.block_size, vocab.cls, vocab.sep)
                           : data::cut_blocks(stream.ids, f.block_size);
  const auto split = data::split_held_out(blocks, f.held_out, f.held_out_at == "last");
  const json data_json = {{"texts", stream.texts},
                          {"tokens", stream.ids.size()},
                          {"blocks", blocks.count()},
                          {"train_blocks", split.train.count()},
                          {"held_out_blocks", split.held_out.count()},
                          {"fingerprint", data::fingerprint(stream.ids)}};
  std::cout << "data: " << stream.texts << " texts, " << stream.ids.size() << " tokens, " << blocks.count()
            << " blocks of " << f.block_size << " (" << split.train.count() << " for training, "
            << split.held_out.count() << " held out)\n";
  if (resumed && resumed->data.value("fingerprint", std::string()) != data_json["fingerprint"].get<std::string>())
    throw examples::DataError(str("--out ", f.out, ": the checkpoint was trained on other text (", resumed->data.dump(),
                                  "; now ", data_json.dump(), "). The files behind --text changed; restore them, or give "
                                  "another --out to start a new run."));

  // The model, initialised as HF does, and the optimiser.
  pretrain::ObjectiveOptions oo;
  oo.seed = f.seed;
  oo.bow_weight = f.bow_weight;
  oo.masking.probability = f.mlm_probability;
  oo.masking.mask_id = vocab.mask;
  oo.masking.vocab_size = vocab.size;
  oo.masking.special_ids = {vocab.pad, vocab.unk, vocab.cls, vocab.sep, vocab.mask};
  oo.bow_excluded = {vocab.cls, vocab.sep, vocab.pad};
  std::optional<pretrain::Base> maybe_base;
  if (bert) {
    models::DistilBertConfig c;
    c.architectures = {"DistilBertForMaskedLM"};
    c.model_type = "distilbert";
    c.vocab_size = vocab.size;
    c.max_position_embeddings = f.positions;
    c.n_layers = f.layers;
    c.n_heads = f.heads;
    c.dim = f.dim;
    c.hidden_dim = f.hidden;
    c.dropout = f.dropout;
    c.attention_dropout = f.attention_dropout;
    c.pad_token_id = vocab.pad;
    maybe_base.emplace(c, oo);
  } else {
    models::GPT2Config c;
    c.architectures = {"GPT2LMHeadModel"};
    c.model_type = "gpt2";
    c.vocab_size = vocab.size;
    c.n_positions = f.positions;
    c.n_embd = f.dim;
    c.n_layer = f.layers;
    c.n_head = f.heads;
    c.n_inner = f.hidden;
    c.resid_pdrop = c.embd_pdrop = f.dropout;
    c.attn_pdrop = f.attention_dropout;
    c.bos_token_id = c.eos_token_id = vocab.eos;
    maybe_base.emplace(c, oo);
  }
  auto& base = *maybe_base;
  base.init(f.seed);
  pretrain::AdamWSettings as;
  as.beta1 = f.beta1;
  as.beta2 = f.beta2;
  as.eps = f.eps;
  as.weight_decay = f.weight_decay;
  pretrain::AdamW opt(lora::unique_named_parameters(base.module()), as);
  int64_t n_params = 0;
  for (const auto& p : opt.parameters()) n_params += p.numel();
  std::cout << "model: " << f.layout << ", dim " << f.dim << ", " << f.layers << " layers, " << f.heads << " heads, hidden "
            << f.hidden << ", " << f.positions << " positions, vocabulary " << vocab.size << ": " << n_params
            << " parameters\n";

  pretrain::TrainingState state;
  state.recipe = recipe;
  state.data = data_json;
  state.curve = {{"steps", json::array()}, {"evals", json::array()}};
  if (resumed) {
    pretrain::load_checkpoint(checkpoint.string(), opt);
    state = *resumed;
    state.data = data_json;
    std::cout << "resuming from " << checkpoint.string() << " at step " << state.step << "\n";
  } else {
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) throw examples::FileError(str("--out: cannot create folder ", f.out, ": ", ec.message()));
  }

  const pretrain::Schedule schedule{f.steps, static_cast<int64_t>(std::ceil(f.warmup * static_cast<double>(f.steps) - 1e-9)),
                                    f.min_lr_ratio};
  const int64_t stop_at = f.max_steps > 0 ? std::min(f.max_steps, f.steps) : f.steps;
  const int64_t B = f.batch_size, T = f.block_size;
  data::BlockOrder order(split.train.count(), f.seed);
  const auto params = opt.parameters();
  auto& steps_curve = state.curve["steps"];
  auto& evals_curve = state.curve["evals"];
  // A curve written after the checkpoint (the run was killed in between) is replaced: the
  // checkpoint's curve ends at its step, and the steps after it are run again.
  Progress progress(f.steps, state.step);
  double tokens = 0;
  auto write_curve = [&](bool finished) {
    json j = {{"program", "pretrain"},     {"layout", f.layout},   {"recipe", recipe},
              {"data", data_json},         {"step", state.step},   {"finished", finished},
              {"tokens_per_step", B * T},  {"steps", steps_curve}, {"evals", evals_curve}};
    lora::write_text_atomic((out / "curve.json").string(), j.dump(1) + "\n", "curve.json");
  };
  auto evaluate = [&] {
    const auto e = base.evaluate(split.held_out, B);
    json entry = {{"step", state.step}, {"held_out_loss", e.loss}, {"held_out_lm", e.lm}, {"cls_spread", e.spread}};
    if (e.bow) entry["held_out_bow"] = *e.bow;
    if (tokens > 0) entry["tokens_per_s"] = progress.tokens_per_second(tokens);
    evals_curve.push_back(entry);
    progress.break_line();
    std::fprintf(stderr, "eval at step %lld: held-out loss %.4f (%s %.4f", static_cast<long long>(state.step), e.loss,
                 bert ? "mlm" : "lm", e.lm);
    if (e.bow) std::fprintf(stderr, ", bow %.4f", *e.bow);
    std::fprintf(stderr, "), [CLS] spread %.4f\n", e.spread);
  };
  auto save = [&](double train_seconds) {
    state.seconds = train_seconds;
    state.cursor = {{"sample", state.step * B}, {"epoch", order.epoch_of(static_cast<uint64_t>(state.step * B))},
                    {"position", order.position_of(static_cast<uint64_t>(state.step * B))}};
    pretrain::save_checkpoint(checkpoint.string(), opt, state);
    write_curve(state.step >= f.steps);
  };

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const double seconds_before = state.seconds;
  const auto start = std::chrono::steady_clock::now();
  auto last_checkpoint = start;
  if (state.step == 0 && f.eval_every > 0) evaluate();
  if (state.step < stop_at)
    std::cout << "training steps " << state.step + 1 << "-" << stop_at << " of " << f.steps << " (batch " << B << " x "
              << T << " tokens, peak LR " << f.lr << ", warm-up " << schedule.warmup << " steps, seed " << f.seed
              << ")\n"
              << std::flush;
  else
    std::cout << "nothing to train: the checkpoint is at step " << state.step << " (--steps " << f.steps
              << (f.max_steps > 0 ? ", --max-steps " + std::to_string(f.max_steps) : std::string()) << ")\n";
  base.module().train();
  progress.restart();
  while (state.step < stop_at && g_signal == 0) {
    const int64_t step = state.step;
    const auto ids = pretrain::sample_blocks(split.train, order, static_cast<uint64_t>(step * B), B);
    torch::manual_seed(data::derive_seed(f.seed, 0x64726f70ULL /* "drop" */, static_cast<uint64_t>(step)));
    opt.zero_grad();
    const auto loss = base.train_loss(ids, B, T, step);
    loss.total.backward();
    const double grad_norm = torch::nn::utils::clip_grad_norm_(params, f.clip);
    const double lr = f.lr * schedule.factor(step);
    opt.step(lr);
    state.step = step + 1;
    tokens += static_cast<double>(B * T);

    const double total = loss.total.item<double>(), lm = loss.lm.item<double>();
    const double bow = loss.bow.defined() ? loss.bow.item<double>() : 0.0;
    if (!std::isfinite(total))
      throw examples::DataError(str("the training loss became ", total, " at step ", state.step, " (LR ", lr,
                                    "); nothing was saved after the last checkpoint. Lower --lr (now ", f.lr,
                                    ") or raise --warmup, and start again with another --out."));
    json entry = {{"step", state.step}, {"lr", lr}, {"loss", total}, {"lm", lm}, {"grad_norm", grad_norm}};
    if (loss.bow.defined()) entry["bow"] = bow;
    steps_curve.push_back(entry);
    progress.add(total, lm, bow);
    if (state.step % f.log_every == 0 || state.step == stop_at) progress.print(state.step, stop_at, lr, tokens, bert);
    if (f.eval_every > 0 && (state.step % f.eval_every == 0 || state.step == stop_at)) {
      evaluate();
      write_curve(state.step >= f.steps);
    }
    if (f.kill_after_step > 0 && state.step == f.kill_after_step) {
      std::cerr << "pretrain: --kill-after-step " << f.kill_after_step << ": exiting as if killed (no checkpoint)\n";
      std::_Exit(137);
    }
    const bool by_steps = f.checkpoint_every > 0 && state.step % f.checkpoint_every == 0;
    const bool by_time = f.checkpoint_minutes > 0 && seconds_since(last_checkpoint) >= 60 * f.checkpoint_minutes;
    if ((by_steps || by_time) && state.step < stop_at) {
      save(seconds_before + seconds_since(start));
      last_checkpoint = std::chrono::steady_clock::now();
    }
    if (f.max_minutes > 0 && seconds_since(start) >= 60 * f.max_minutes && state.step < stop_at) {
      progress.break_line();
      std::cout << "--max-minutes " << f.max_minutes << " reached at step " << state.step << "\n";
      break;
    }
  }
  progress.break_line();

  // The end of this run (finished, --max-steps, --max-minutes or a signal): checkpoint, then the
  // Hub folder of the model as it is, checked by loading it back.
  save(seconds_before + seconds_since(start));
  base.export_to(f.out);
  for (const auto& name : vocab.files) copy_file_atomic(fs::path(f.tokenizer_dir) / name, out / name);
  const double diff = reload_check(base, f.out, split.held_out);
  std::printf("wrote %s: config.json, model.safetensors, %s (step %lld of %lld); reloaded: max |logit diff| %.3g\n",
              f.out.c_str(), bert ? "vocab.txt" : "vocab.json, merges.txt", static_cast<long long>(state.step),
              static_cast<long long>(f.steps), diff);
  if (!(diff <= 1e-5))
    throw examples::DataError(str("the model loaded back from ", f.out, " gives other logits than the trained one (max |",
                                  "difference| ", diff, "); this is a bug in the export or the loader, please report it."));
  if (g_signal != 0) {
    std::cout << "stopped by signal " << g_signal << " at step " << state.step
              << "; run the same command again to continue.\n";
    return 128 + g_signal;
  }
  if (state.step < f.steps)
    std::cout << "stopped at step " << state.step << " of " << f.steps
              << "; run the same command again (without --max-steps / --max-minutes) to continue.\n";
  else
    std::cout << "finished: " << f.steps << " steps in " << duration(state.seconds) << " of training\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  CLI::App app("pretrain: pretrain a small DistilBERT (masked LM + bag of words at [CLS]) or GPT-2 (causal LM) base "
               "from plain text, resumably, into a Hugging Face Hub folder. Flags left at 0 or empty take the layout's "
               "recipe (docs/pretraining.md).",
               "pretrain");
  app.option_defaults()->always_capture_default();
  app.add_option("--layout", f.layout, "distilbert (masked LM + bag of words) or gpt2 (causal LM)")
      ->check(CLI::IsMember({"distilbert", "gpt2"}));
  app.add_option("--out", f.out, "output folder: the Hub folder, curve.json, checkpoint.safetensors [runs/pretrain-<layout>]");
  app.add_option("--shared", f.shared, "the shared folder (data/ in it) [$LORA_SHARED_DIR, else ../shared]");
  app.add_option("--data-dir", f.data_dir, "folder --text paths are relative to [<shared>/data]");
  app.add_option("--tokenizer-dir", f.tokenizer_dir,
                 "vocab.txt (distilbert) or vocab.json + merges.txt (gpt2) [<data-dir>/tokenizers/bert-base-uncased|gpt2]");
  app.add_option("--text", f.texts,
                 "text files, read in order: FILE or FILE:FIRST-LAST (1-based lines, or rows of an AG-News .csv) "
                 "[distilbert: the recipe's Reuters, WikiText-103 head and State of the Union files; gpt2: "
                 "agnews/train_subset_14995.csv:10001-14995]");
  app.add_option("--separator", f.separator, "after each line or row: none, eos (<|endoftext|>), newline [distilbert: none, gpt2: eos]")
      ->check(CLI::IsMember({"", "none", "eos", "newline"}));
  app.add_option("--block-size", f.block_size, "tokens per block, [CLS] and [SEP] included [128 | 256]")
      ->check(CLI::Range(int64_t{0}, int64_t{1 << 16}));
  app.add_option("--held-out", f.held_out, "blocks held out for the held-out loss and [CLS] spread [64 | 32]")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40));
  app.add_option("--held-out-at", f.held_out_at, "hold out the first or the last blocks [first | last]")
      ->check(CLI::IsMember({"", "first", "last"}));
  app.add_option("--dim", f.dim, "width (DistilBERT dim, GPT-2 n_embd)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--layers", f.layers, "transformer blocks")->check(CLI::Range(int64_t{1}, int64_t{1} << 10));
  app.add_option("--heads", f.heads, "attention heads (must divide --dim)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--hidden", f.hidden, "feed-forward width (DistilBERT hidden_dim, GPT-2 n_inner) [4 x dim]")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  app.add_option("--positions", f.positions, "learned positions [--block-size]")->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  app.add_option("--dropout", f.dropout, "dropout (DistilBERT dropout; GPT-2 resid_pdrop and embd_pdrop)")
      ->check(CLI::Range(0.0, 0.99));
  app.add_option("--attention-dropout", f.attention_dropout, "dropout on attention weights")->check(CLI::Range(0.0, 0.99));
  app.add_option("--mlm-probability", f.mlm_probability, "share of non-special tokens chosen for the masked LM (distilbert)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--bow-weight", f.bow_weight, "weight of the bag-of-words loss at [CLS] (distilbert; 0: off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--batch-size", f.batch_size, "blocks per step [32 | 2]")->check(CLI::Range(int64_t{0}, int64_t{1} << 20));
  app.add_option("--steps", f.steps, "length of the LR schedule in optimizer steps [2400 | 950]")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app.add_option("--lr", f.lr, "peak learning rate")->check(CLI::PositiveNumber);
  app.add_option("--warmup", f.warmup, "linear warm-up, as a share of --steps (rounded up to whole steps)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--min-lr-ratio", f.min_lr_ratio, "the cosine ends at this share of the peak")->check(CLI::Range(0.0, 1.0));
  app.add_option("--weight-decay", f.weight_decay, "AdamW weight decay, on tensors of >= 2 dimensions only")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--clip", f.clip, "gradient-norm clip")->check(CLI::PositiveNumber);
  app.add_option("--beta1", f.beta1, "AdamW beta1")->check(CLI::Range(0.0, 0.999999));
  app.add_option("--beta2", f.beta2, "AdamW beta2")->check(CLI::Range(0.0, 0.999999999));
  app.add_option("--eps", f.eps, "AdamW epsilon")->check(CLI::PositiveNumber);
  app.add_option("--seed", f.seed, "seed of the initialisation, the data order, the masks and dropout");
  app.add_option("--max-steps", f.max_steps, "stop after this step (the schedule still spans --steps); 0: run to the end")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-minutes", f.max_minutes, "stop after this much training time; 0: no limit")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--checkpoint-minutes", f.checkpoint_minutes, "write a checkpoint this often; 0: only at the end")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--checkpoint-every", f.checkpoint_every, "also write a checkpoint every this many steps; 0: never")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--eval-every", f.eval_every, "held-out loss and [CLS] spread every this many steps (and at the start "
                 "and the end); 0: never")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-every", f.log_every, "progress line every this many steps")->check(CLI::PositiveNumber);
  app.add_option("--threads", f.threads, "CPU threads (0: LibTorch's default)")->check(CLI::NonNegativeNumber);
  app.add_option("--kill-after-step", f.kill_after_step,
                 "testing: exit abruptly (status 137, no checkpoint) after this step, as if killed")
      ->check(CLI::NonNegativeNumber);
  return examples::program_main(app, argc, argv, "pretrain", [&] { return run(f); });
}

// wikitext_sweep: LoRA vs full fine-tuning of distilgpt2 on WikiText-2 over learning rate x rank.
// `wikitext_sweep --help` lists the flags; `--preset quick` runs in minutes on a CPU.
#include "sweep/run.hpp"
#include "tasks/wikitext_task.hpp"

int main(int argc, char** argv) {
  return sweep::program_main(argc, argv, tasks::wikitext_spec(), [](const sweep::Options& o) {
    return std::make_unique<tasks::WikiTextTask>(o);
  });
}

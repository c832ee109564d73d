// agnews_sweep: LoRA vs full fine-tuning of DistilBERT on AG-News over learning rate x rank.
// `agnews_sweep --help` lists the flags; `--preset quick` runs in minutes on a CPU.
#include "sweep/run.hpp"
#include "tasks/agnews_task.hpp"

int main(int argc, char** argv) {
  return sweep::program_main(argc, argv, tasks::agnews_spec(), [](const sweep::Options& o) {
    return std::make_unique<tasks::AgNewsTask>(o);
  });
}

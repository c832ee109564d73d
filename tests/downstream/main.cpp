// A user's program: adapt a model written with plain torch::nn types and one with lora::Linear.
#include <lora/lora.hpp>
#include <torch/torch.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  auto model = torch::nn::Sequential(torch::nn::Linear(8, 16), torch::nn::ReLU(), lora::Linear(16, 4));
  lora::Config cfg;
  cfg.rank = 2;
  cfg.alpha = 4;
  auto adapters = lora::inject(model, cfg);
  torch::optim::AdamW opt(adapters.parameters(), torch::optim::AdamWOptions(1e-2));
  auto x = torch::randn({5, 8});
  auto before = model->forward(x).detach();
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    model->forward(x).pow(2).mean().backward();
    adapters.step(opt);
  }
  auto after = model->forward(x).detach();
  const bool changed = !torch::allclose(before, after);
  std::cout << "lora " << lora::version() << ": " << adapters.layers().size() << " layers adapted, output "
            << (changed ? "changed" : "UNCHANGED") << "\n";
  return adapters.layers().size() == 2 && changed ? 0 : 1;
}

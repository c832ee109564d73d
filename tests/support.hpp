// Test helpers: where the shared data lives, skipping cleanly without it, and tensor
// comparisons that report the largest difference (as llm.c's test_gpt2 does).
#pragma once

#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "catch.hpp"

namespace lora_test {

namespace fs = std::filesystem;

/// The folder holding data/ and fixtures/: $LORA_SHARED_DIR, else the build's default
/// (../shared beside the source tree).
inline fs::path shared_dir() {
  if (const char* env = std::getenv("LORA_SHARED_DIR"); env && *env) return env;
  return LORA_DEFAULT_SHARED_DIR;
}
inline fs::path fixture(const std::string& name) { return shared_dir() / "fixtures" / name; }
inline fs::path data(const std::string& name) { return shared_dir() / "data" / name; }

/// True if `p` exists; otherwise prints why the test is skipped.
inline bool available(const fs::path& p) {
  if (fs::exists(p)) return true;
  WARN("SKIPPED: " << p.string()
                   << " is absent. Point LORA_SHARED_DIR at the shared folder (with data/ and fixtures/) to run this test.");
  return false;
}
/// Use at the top of a test: returns from it (skipping) when `path` is absent.
#define LORA_REQUIRE_PATH(path) \
  do {                          \
    if (!::lora_test::available(path)) return; \
  } while (0)

/// What a program printed on stdout, and how it ended (pclose()'s status: 0 on success).
struct ProgramRun {
  int status = -1;
  std::string out;
};

/// Runs a shell command line, capturing its stdout (stderr goes to the test log).
inline ProgramRun run_program(const std::string& command) {
  ProgramRun r;
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return r;
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) r.out.append(buf, n);
  r.status = pclose(pipe);
  return r;
}

inline std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// max |a - b|, printed, and whether |a - b| <= atol + rtol * |b| everywhere.
inline bool allclose(const torch::Tensor& a, const torch::Tensor& b, double rtol, double atol, const std::string& what) {
  auto x = a.detach().to(torch::kCPU, torch::kDouble), y = b.detach().to(torch::kCPU, torch::kDouble);
  if (x.sizes() != y.sizes()) {
    std::ostringstream s;
    s << what << ": shape " << x.sizes() << " vs " << y.sizes();
    UNSCOPED_INFO(s.str());
    return false;
  }
  const double maxdiff = x.numel() ? (x - y).abs().max().item<double>() : 0.0;
  UNSCOPED_INFO(what << ": max |diff| = " << maxdiff << " (rtol " << rtol << ", atol " << atol << ")");
  std::cout << "  " << what << ": max |diff| = " << maxdiff << "\n";
  return x.numel() == 0 || ((x - y).abs() <= atol + rtol * y.abs()).all().item<bool>();
}

}  // namespace lora_test

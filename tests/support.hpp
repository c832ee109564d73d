// Test helpers: where the shared data lives, skipping cleanly without it, and tensor
// comparisons that report the largest difference (as llm.c's test_gpt2 does).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <lora/error.hpp>
#include <lora/io.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

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

/// A fixture committed with the tests (tests/fixtures/<name>: small copies of shared fixtures
/// made by scripts/make-test-fixtures.sh, see tests/fixtures/README.md). It is part of every
/// clone, so a test that uses it fails, never skips, when it is absent.
inline fs::path committed_fixture(const std::string& name) {
  const auto p = fs::path(LORA_COMMITTED_FIXTURES_DIR) / name;
  if (!fs::exists(p))
    FAIL("the committed fixture " << p.string() << " is absent. It belongs to the repository (tests/fixtures/): "
                                  << "restore it with git, or rebuild it with scripts/make-test-fixtures.sh.");
  return p;
}

/// Under CI (CI=true or CI=1) a missing data file is a failure, not a skip: the CI machine is
/// meant to have the shared folder, and a test that silently does not run there proves nothing.
inline bool missing_data_fails() {
  const char* ci = std::getenv("CI");
  return ci && (std::string(ci) == "true" || std::string(ci) == "1");
}

/// Records that the running test skipped (defined in main.cpp): the runner then exits with
/// code 4 when nothing failed, which CTest reports as "Skipped" (SKIP_RETURN_CODE 4, as
/// Catch2 v3 uses for skipped tests), for Catch2 v2 and v3 alike.
void note_skipped(const std::string& why);

/// True if `p` exists. Otherwise the test skips (prints why and records it), or, under CI,
/// fails.
inline bool available(const fs::path& p) {
  if (fs::exists(p)) return true;
  const std::string why =
      p.string() + " is absent. Point LORA_SHARED_DIR at the shared folder (with data/ and fixtures/) to run this test.";
  if (missing_data_fails()) {
    FAIL_CHECK("MISSING (CI is set, so a missing file fails instead of skipping): " << why);
    return false;
  }
  WARN("SKIPPED: " << why);
  note_skipped(why);
  return false;
}
/// Use at the top of a test: returns from it when `path` is absent, the test being reported
/// as skipped (or, under CI, failed).
#define LORA_REQUIRE_PATH(path) \
  do {                          \
    if (!::lora_test::available(path)) return; \
  } while (0)

/// What a program printed on stdout (and on stderr, for run_program_stderr), and how it ended
/// (pclose()'s status: 0 on success).
struct ProgramRun {
  int status = -1;
  std::string out, err;
  /// The exit code, or -1 if the command did not run or end normally. A shell that cannot run the
  /// program exits with 126 or 127: a test of an error exit checks the code, not just "not 0".
  int exit_code() const { return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
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

/// A fresh empty folder under the system's temporary folder, unique to this process.
inline fs::path temp_dir(const std::string& tag) {
  auto p = fs::temp_directory_path() / ("lora_test_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

/// run_program with stderr captured too, in `err` (the command must not redirect stderr itself).
inline ProgramRun run_program_stderr(const std::string& command) {
  const auto dir = temp_dir("stderr");
  auto r = run_program(command + " 2>" + (dir / "stderr.txt").string());
  r.err = read_text(dir / "stderr.txt");
  fs::remove_all(dir);
  return r;
}

/// A file `name` holding `content` (written as bytes), alone in a fresh folder of its own.
inline fs::path temp_file(const std::string& name, const std::string& content) {
  const auto path = temp_dir("file_" + name) / name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

/// A nested JSON list of numbers (a fixture's reference values) as a tensor of `dtype`.
inline torch::Tensor json_tensor(const nlohmann::json& j, torch::Dtype dtype = torch::kDouble) {
  std::vector<int64_t> shape;
  for (const auto* p = &j; p->is_array(); p = &(*p)[0]) {
    shape.push_back(static_cast<int64_t>(p->size()));
    if (p->empty()) break;
  }
  std::vector<double> flat;
  const std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& x) {
    if (x.is_array())
      for (const auto& y : x) walk(y);
    else
      flat.push_back(x.get<double>());
  };
  walk(j);
  return torch::tensor(flat, torch::kDouble).view(shape).to(dtype);
}

/// json_tensor, or an undefined tensor for JSON null.
inline torch::Tensor optional_json_tensor(const nlohmann::json& j, torch::Dtype dtype = torch::kDouble) {
  return j.is_null() ? torch::Tensor() : json_tensor(j, dtype);
}

/// The message of the `E` that `f` throws ("" if it throws nothing or something else).
template <typename E = lora::Error, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (...) {
    return "";
  }
  return "";
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace lora_test

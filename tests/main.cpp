// The test runner's main(), for Catch2 v2 and v3. Exit code: Catch2's (the number of failed
// test cases) when something failed; otherwise 4 when a test skipped because its data is absent
// (lora_test::note_skipped, see support.hpp), which CTest reports as skipped (SKIP_RETURN_CODE 4);
// otherwise 0.
#if LORA_CATCH2_MAJOR >= 3
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include <iostream>
#include <string>
#include <vector>

namespace lora_test {
namespace {
std::vector<std::string>& skipped() {
  static std::vector<std::string> reasons;
  return reasons;
}
}  // namespace

void note_skipped(const std::string& why) { skipped().push_back(why); }
}  // namespace lora_test

int main(int argc, char* argv[]) {
  const int result = Catch::Session().run(argc, argv);
  const auto& skipped = lora_test::skipped();
  if (result != 0 || skipped.empty()) return result;
  std::cerr << "SKIPPED (exit code 4): " << skipped.size() << " missing file(s), first: " << skipped.front() << "\n";
  return 4;
}

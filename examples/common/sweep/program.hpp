// main() of a sweep program: parses the command line (cli.hpp), builds the program's Task and
// runs the sweep (engine.hpp); turns every error into a one-line message and an exit status.
#pragma once

#include <functional>
#include <iostream>
#include <memory>

#include "perf/allocator.hpp"
#include "error_message.hpp"
#include "errors.hpp"

#include "cli.hpp"
#include "engine.hpp"
#include "options.hpp"
#include "task.hpp"

namespace sweep {

/// main() of a sweep program: parses the command line, builds the task, runs the sweep.
/// Exit status 0 on success, 2 on a usage error, 1 on any other error.
inline int program_main(int argc, const char* const argv[], const ProgramSpec& spec,
                        const std::function<std::unique_ptr<Task>(const Options&)>& make_task) {
  try {
    // Large CPU blocks kept for reuse instead of mapped and faulted in again every step:
    // 1.8x faster FullFT and 1.3x faster LoRA steps on a 2-core VM (docs/performance.md).
    perf::use_caching_cpu_allocator();
    const auto o = parse_options(argc, argv, spec);
    const auto task = make_task(o);
    run_sweep(o, *task);
    return 0;
  } catch (const HelpRequested& h) {
    std::cout << h.text;
    return 0;
  } catch (const examples::UsageError& e) {
    std::cerr << spec.name << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << spec.name << ": error: " << examples::message(e) << "\n";
    return 1;
  }
}

}  // namespace sweep

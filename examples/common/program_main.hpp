// The end of an example program's main(): parse the command line, run the program, and turn
// what it throws into a message and an exit status, the same way in every program: --help
// prints the help (0); a bad flag or an examples::UsageError prints the message (2); any other
// error prints "error: " and its message without LibTorch's stack frames (1).
#pragma once

#include <CLI/CLI.hpp>

#include <exception>
#include <iostream>
#include <string>

#include "error_message.hpp"
#include "errors.hpp"

namespace examples {

/// Parses `argv` into `app`, then returns run()'s exit status (see the top).
template <typename Run>
int program_main(CLI::App& app, int argc, char** argv, const std::string& name, Run run) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    std::cerr << name << ": " << e.what() << ". Run " << name << " --help for the flags.\n";
    return 2;
  }
  try {
    return run();
  } catch (const UsageError& e) {
    std::cerr << name << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << name << ": error: " << message(e) << "\n";
    return 1;
  }
}

}  // namespace examples

// What a program prints for an exception: the message, without LibTorch's stack frames.
// A c10::Error's what() carries a backtrace of some 30 frames (LibTorch 1.13 always, 2.x with
// TORCH_SHOW_CPP_STACKTRACES=1) that buries the one line a user needs; message() keeps the
// first line of what_without_backtrace() (the error itself, e.g. "DefaultCPUAllocator: not
// enough memory: you tried to allocate ... bytes."). Other exceptions print as what() says.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace examples {

/// The first line of `text`, without trailing white space.
inline std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  const auto end = line.find_last_not_of(" \t\r");
  return end == std::string::npos ? "" : line.substr(0, end + 1);
}

/// The message to print for `e`: a LibTorch error's first line, without stack frames; any
/// other exception's what().
inline std::string message(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) {
    const std::string brief = first_line(c10->what_without_backtrace());
    return "LibTorch error: " + (brief.empty() ? std::string("(no message)") : brief);
  }
  return e.what();
}

}  // namespace examples

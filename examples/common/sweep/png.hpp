// Turns an SVG into a PNG with an external converter (rsvg-convert, or ImageMagick's convert),
// when one is on PATH; the sweep's plots are SVG first, PNG where the machine can make one.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace sweep {

namespace detail {

/// The full path of `program` on $PATH, or "".
inline std::string find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

/// Runs `argv` (no shell) with its output discarded; true when it exits with status 0.
inline bool run_quietly(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return false;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace detail

/// Converts `svg` to `png` with rsvg-convert or convert (ImageMagick), whichever is on PATH
/// first. Returns a line saying what was written.
inline std::string render_png(const std::string& svg, const std::string& png) {
  if (const auto rsvg = detail::find_on_path("rsvg-convert"); !rsvg.empty()) {
    if (detail::run_quietly({rsvg, "-o", png, svg})) return "wrote " + png + " (rsvg-convert)";
    return "only SVG written: rsvg-convert failed on " + svg;
  }
  if (const auto convert = detail::find_on_path("convert"); !convert.empty()) {
    if (detail::run_quietly({convert, svg, png})) return "wrote " + png + " (ImageMagick convert)";
    return "only SVG written: ImageMagick convert failed on " + svg;
  }
  return "only SVG written: no rsvg-convert or convert on PATH to make a PNG";
}

}  // namespace sweep

// Where a worker's progress goes, and --jobs N: N worker processes that each train one point
// at a time, reporting through a pipe to the parent, which draws one progress bar for all.
//
// Processes rather than threads: each point owns LibTorch's global state (the RNG seeded with
// the point's seed, the intra-op thread count), so N points at once need N processes. The
// workers are forked before the parent touches LibTorch's thread pools (a fork after OpenMP
// has started is not safe), and each one claims its points with a PointClaim, so that the
// workers share the list of points without any scheduler. Results do not depend on which
// worker ran a point: every point reseeds everything from its own seed.
//
// The pipe protocol: one line per message, fields separated by tabs.
//   B <index> <steps> <key>     a point starts
//   U <step> <steps> <loss>     progress of the running point
//   E <diverged 0|1> <text>     the point finished; <text> is its line for the log
//   N <text>                    a line for the log
#pragma once

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <lora/error.hpp>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "error_message.hpp"
#include "errors.hpp"
#include "fd_io.hpp"
#include "progress.hpp"

namespace sweep {

/// Where a worker reports its points: the progress bar (one process) or a pipe (--jobs).
class Reporter {
 public:
  virtual ~Reporter() = default;
  virtual void begin_point(size_t index, const std::string& key, int64_t steps) = 0;
  virtual void update(int64_t step, int64_t steps, double loss) = 0;
  virtual void end_point(const std::string& line, bool diverged) = 0;
  virtual void note(const std::string& line) = 0;
};

/// A Reporter that draws on a Progress bar directly.
class BarReporter : public Reporter {
 public:
  explicit BarReporter(Progress& p) : p_(p) {}
  void begin_point(size_t index, const std::string& key, int64_t steps) override { p_.begin_point(index, key, steps); }
  void update(int64_t step, int64_t steps, double loss) override { p_.update(step, steps, loss); }
  void end_point(const std::string& line, bool) override { p_.end_point(line); }
  void note(const std::string& line) override { p_.note(line); }

 private:
  Progress& p_;
};

namespace detail {

/// Text without tabs and newlines, for one field of a message.
inline std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\t', ' ');
  return s;
}

/// A worker's Reporter: each call becomes one line on the pipe to the parent.
class PipeReporter : public Reporter {
 public:
  explicit PipeReporter(int fd) : fd_(fd) {}
  void begin_point(size_t index, const std::string& key, int64_t steps) override {
    send("B\t" + std::to_string(index) + "\t" + std::to_string(steps) + "\t" + one_line(key));
  }
  void update(int64_t step, int64_t steps, double loss) override {
    char buf[96];
    std::snprintf(buf, sizeof buf, "U\t%lld\t%lld\t%.9g", static_cast<long long>(step), static_cast<long long>(steps),
                  loss);
    send(buf);
  }
  void end_point(const std::string& line, bool diverged) override {
    send(std::string("E\t") + (diverged ? "1" : "0") + "\t" + one_line(line));
  }
  void note(const std::string& line) override { send("N\t" + one_line(line)); }

 private:
  void send(const std::string& msg) {
    examples::write_all(fd_, msg + "\n");  // false: the parent is gone; the worker ends with it
  }
  int fd_;
};

/// Splits "a\tb\tc" into at most `n` fields (the last one keeps any further tabs).
inline std::vector<std::string> fields(const std::string& line, size_t n) {
  std::vector<std::string> out;
  size_t start = 0;
  while (out.size() + 1 < n) {
    const auto tab = line.find('\t', start);
    if (tab == std::string::npos) break;
    out.push_back(line.substr(start, tab - start));
    start = tab + 1;
  }
  out.push_back(line.substr(start));
  return out;
}

}  // namespace detail

/// What the workers did, as their messages told it.
struct JobsOutcome {
  size_t ran = 0, diverged = 0;
  std::vector<std::string> failures;  ///< "worker 2 (pid 1234) exited with status 1", one per failed worker
};

/// Runs `work(worker, reporter)` in `workers` forked processes (worker from 0) and relays
/// their reports to `progress`, slot = worker. `work` returns the worker's exit status; an
/// exception in it is printed on stderr as "<name>: worker <i>: error: ..." and gives status 1.
/// Returns when every worker has exited.
inline JobsOutcome run_workers(size_t workers, const std::string& name,
                               const std::function<int(size_t, Reporter&)>& work, Progress& progress) {
  struct Child {
    pid_t pid = -1;
    int fd = -1;
    std::string pending;
  };
  std::vector<Child> children(workers);
  std::cout.flush();
  std::cerr.flush();
  for (size_t w = 0; w < workers; ++w) {
    int fds[2];
    if (::pipe(fds) != 0) throw examples::Error(std::string("--jobs: cannot create a pipe: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid < 0) throw examples::Error(std::string("--jobs: cannot start a worker process: ") + std::strerror(errno));
    if (pid == 0) {
      ::close(fds[0]);
      for (size_t k = 0; k < w; ++k) ::close(children[k].fd);
#ifdef __linux__
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a parent killed with SIGKILL takes its workers along
#endif
      int status = 1;
      try {
        detail::PipeReporter reporter(fds[1]);
        status = work(w, reporter);
      } catch (const std::exception& e) {
        std::cerr << name << ": worker " << w << ": error: " << examples::message(e) << "\n";
      }
      std::cout.flush();
      std::cerr.flush();
      ::_exit(status);  // no static destructors: they belong to the parent
    }
    ::close(fds[1]);
    children[w] = Child{pid, fds[0], {}};
  }

  JobsOutcome outcome;
  size_t open = workers;
  while (open > 0) {
    std::vector<pollfd> pfds;
    std::vector<size_t> who;
    for (size_t w = 0; w < workers; ++w)
      if (children[w].fd >= 0) pfds.push_back({children[w].fd, POLLIN, 0}), who.push_back(w);
    if (::poll(pfds.data(), pfds.size(), 1000) < 0 && errno != EINTR)
      throw examples::Error(std::string("--jobs: poll failed: ") + std::strerror(errno));
    for (size_t i = 0; i < pfds.size(); ++i) {
      if (!(pfds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      auto& c = children[who[i]];
      char buf[4096];
      const ssize_t n = ::read(c.fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(c.fd);
        c.fd = -1;
        --open;
        continue;
      }
      c.pending.append(buf, static_cast<size_t>(n));
      for (auto nl = c.pending.find('\n'); nl != std::string::npos; nl = c.pending.find('\n')) {
        const std::string msg = c.pending.substr(0, nl);
        c.pending.erase(0, nl + 1);
        const size_t slot = who[i];
        if (msg.rfind("B\t", 0) == 0) {
          const auto f = detail::fields(msg, 4);
          if (f.size() == 4) progress.begin_point(std::stoul(f[1]), f[3], std::stoll(f[2]), slot);
        } else if (msg.rfind("U\t", 0) == 0) {
          const auto f = detail::fields(msg, 4);
          if (f.size() == 4) progress.update(std::stoll(f[1]), std::stoll(f[2]), std::strtod(f[3].c_str(), nullptr), slot);
        } else if (msg.rfind("E\t", 0) == 0) {
          const auto f = detail::fields(msg, 3);
          ++outcome.ran;
          outcome.diverged += f.size() == 3 && f[1] == "1";
          progress.end_point(f.back(), slot);
        } else if (msg.rfind("N\t", 0) == 0) {
          progress.note(msg.substr(2));
        }
      }
    }
  }
  for (size_t w = 0; w < workers; ++w) {
    int status = 0;
    while (::waitpid(children[w].pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) continue;
    outcome.failures.push_back("worker " + std::to_string(w) + " (pid " + std::to_string(children[w].pid) + ") " +
                               (WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                                    : "exited with status " + std::to_string(WEXITSTATUS(status))));
  }
  return outcome;
}

}  // namespace sweep

// What the engine (run.hpp) shows and forks while it runs: the progress bar, where a worker's
// progress goes, and --jobs N.
//
// The progress bar on stderr: point i/n and its key (each running point's, with --jobs), step,
// loss, steps/s and the ETA of the whole sweep. On a terminal it redraws one line in place
// (\r); otherwise (CI logs, Slurm output files) it prints a line each time the sweep passes
// another `every_percent`.
//
// --jobs N: N worker processes that each train one point at a time, reporting through a pipe
// to the parent, which draws one progress bar for all.
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
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
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

namespace sweep {

/// "42s", "3m07s", "2h05m".
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  return buf;
}

class Progress {
 public:
  using Clock = std::chrono::steady_clock;

  /// `terminal`: redraw in place; otherwise print a line every `every_percent` of the sweep.
  explicit Progress(std::ostream& os = std::cerr, bool terminal = ::isatty(STDERR_FILENO) != 0,
                    int every_percent = 5)
      : os_(os), terminal_(terminal), every_percent_(std::max(1, every_percent)) {}

  /// Starts the sweep: `points` to run here, about `total_steps` optimizer steps in all, at
  /// most `slots` points at once (--jobs).
  void begin_sweep(size_t points, int64_t total_steps, size_t slots = 1) {
    points_ = points;
    total_steps_ = std::max<int64_t>(total_steps, 1);
    finished_steps_ = 0;
    started_ = 0;
    slots_.assign(std::max<size_t>(slots, 1), Slot{});
    next_percent_ = every_percent_;
    start_ = Clock::now();
  }

  /// Starts point `index` (from 0) called `key` in `slot`, expected to take `steps` steps.
  void begin_point(size_t index, const std::string& key, int64_t steps, size_t slot = 0) {
    auto& s = slots_.at(slot);
    s = Slot{true, index, key, steps, 0, NAN};
    ++started_;
    draw(true);
  }

  /// The point in `slot` reached `step` of `steps` (the loop's own count, which corrects the
  /// estimate) with mean recent loss `loss`.
  void update(int64_t step, int64_t steps, double loss, size_t slot = 0) {
    auto& s = slots_.at(slot);
    total_steps_ += steps - s.steps;
    s.steps = steps;
    s.step = step;
    s.loss = loss;
    draw(false);
  }

  /// Ends the point in `slot`: its steps count as done; `line` is printed on a line of its own.
  void end_point(const std::string& line, size_t slot = 0) {
    auto& s = slots_.at(slot);
    total_steps_ += s.step - s.steps;  // a diverged run stops early
    finished_steps_ += s.step;
    ++finished_;
    s = Slot{};
    note(line);
  }

  /// Prints `line` on its own line, above the bar.
  void note(const std::string& line) {
    if (terminal_ && drawn_) os_ << "\r\033[K";
    os_ << line << "\n";
    drawn_ = false;
    os_.flush();
  }

  /// Clears the bar (at the end of the sweep).
  void finish() {
    if (terminal_ && drawn_) os_ << "\r\033[K";
    drawn_ = false;
    os_.flush();
  }

  /// The status line. One slot: "[point 2/6 lora_r16_lr1e-04_s42] step 40/120 loss 0.4123 |
  /// 35.2 steps/s | 41% ETA 1m12s"; several: "[3/27 done] lora_r16_lr1e-04_s42 40/120 loss
  /// 0.4123, full_lr1e-04_s42 12/120 loss 1.2000 | ...".
  std::string line() const {
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done_steps()) / elapsed : 0;
    const double eta = rate > 0 ? static_cast<double>(total_steps_ - done_steps()) / rate : NAN;
    std::string head;
    if (slots_.size() == 1) {
      const auto& s = slots_.front();
      head = "[point " + std::to_string(s.index + 1) + "/" + std::to_string(points_) + " " + s.key + "] step " +
             std::to_string(s.step) + "/" + std::to_string(s.steps) + " loss " + loss_text(s.loss);
    } else {
      head = "[" + std::to_string(finished_) + "/" + std::to_string(points_) + " done]";
      std::string sep = " ";
      for (const auto& s : slots_) {
        if (!s.busy) continue;
        head += sep + s.key + " " + std::to_string(s.step) + "/" + std::to_string(s.steps) + " loss " + loss_text(s.loss);
        sep = ", ";
      }
    }
    char buf[96];
    std::snprintf(buf, sizeof buf, " | %.1f steps/s | %d%% ETA %s", rate, percent(), format_duration(eta).c_str());
    return head + buf;
  }

 private:
  struct Slot {
    bool busy = false;
    size_t index = 0;
    std::string key;
    int64_t steps = 0, step = 0;
    double loss = NAN;
  };

  static std::string loss_text(double loss) {
    if (!std::isfinite(loss)) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4f", loss);
    return buf;
  }
  int64_t done_steps() const {
    int64_t d = finished_steps_;
    for (const auto& s : slots_) d += s.step;
    return d;
  }
  int percent() const {
    return static_cast<int>(100.0 * static_cast<double>(done_steps()) / static_cast<double>(total_steps_));
  }

  /// Terminal: redraw (at most 10 times a second unless `force`). Log: one line per threshold.
  void draw(bool force) {
    if (terminal_) {
      const auto now = Clock::now();
      if (!force && drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
      last_draw_ = now;
      os_ << "\r\033[K" << line();
      drawn_ = true;
      os_.flush();
      return;
    }
    if (percent() < next_percent_) return;
    while (next_percent_ <= percent()) next_percent_ += every_percent_;
    os_ << line() << "\n";
    os_.flush();
  }

  std::ostream& os_;
  bool terminal_;
  int every_percent_;
  size_t points_ = 0, started_ = 0, finished_ = 0;
  std::vector<Slot> slots_ = std::vector<Slot>(1);
  int64_t total_steps_ = 1, finished_steps_ = 0;
  int next_percent_ = 5;
  bool drawn_ = false;
  Clock::time_point start_ = Clock::now(), last_draw_{};
};

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

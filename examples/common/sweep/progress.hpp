// The sweep's progress bar on stderr: point i/n and its key, step, loss, steps/s and the ETA
// of the whole sweep. On a terminal it redraws one line in place (\r); otherwise (CI logs,
// Slurm output files) it prints a line each time the sweep passes another `every_percent`.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <string>

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

  /// Starts the sweep: `points` to run here, about `total_steps` optimizer steps in all.
  void begin_sweep(size_t points, int64_t total_steps) {
    points_ = points;
    total_steps_ = std::max<int64_t>(total_steps, 1);
    done_steps_ = 0;
    next_percent_ = every_percent_;
    start_ = Clock::now();
  }

  /// Starts point `index` (from 0) called `key`, expected to take `steps` steps.
  void begin_point(size_t index, const std::string& key, int64_t steps) {
    index_ = index;
    key_ = key;
    point_steps_ = steps;
    step_ = 0;
    loss_ = NAN;
    point_base_ = done_steps_;
    draw(true);
  }

  /// The point reached `step` of `steps` (the loop's own count, which corrects the estimate)
  /// with mean recent loss `loss`.
  void update(int64_t step, int64_t steps, double loss) {
    total_steps_ += steps - point_steps_;
    point_steps_ = steps;
    step_ = step;
    loss_ = loss;
    done_steps_ = point_base_ + step;
    draw(false);
  }

  /// Ends the current point: its steps count as done; `line` is printed on a line of its own.
  void end_point(const std::string& line) {
    total_steps_ += step_ - point_steps_;  // a diverged run stops early
    done_steps_ = point_base_ + step_;
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

  /// The status line: "[point 2/6 lora_r16_lr1e-04_s42] step 40/120 loss 0.4123 | 35.2 steps/s | 41% ETA 1m12s".
  std::string line() const {
    const double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
    const double rate = elapsed > 0 ? static_cast<double>(done_steps_) / elapsed : 0;
    const double eta = rate > 0 ? static_cast<double>(total_steps_ - done_steps_) / rate : NAN;
    char buf[256];
    std::snprintf(buf, sizeof buf, "[point %zu/%zu %s] step %lld/%lld loss %s | %.1f steps/s | %d%% ETA %s",
                  index_ + 1, points_, key_.c_str(), static_cast<long long>(step_),
                  static_cast<long long>(point_steps_), std::isfinite(loss_) ? format_loss(loss_).c_str() : "-", rate,
                  percent(), format_duration(eta).c_str());
    return buf;
  }

 private:
  static std::string format_loss(double loss) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4f", loss);
    return buf;
  }
  int percent() const {
    return static_cast<int>(100.0 * static_cast<double>(done_steps_) / static_cast<double>(total_steps_));
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
  size_t points_ = 0, index_ = 0;
  std::string key_;
  int64_t total_steps_ = 1, done_steps_ = 0, point_base_ = 0, point_steps_ = 0, step_ = 0;
  double loss_ = NAN;
  int next_percent_ = 5;
  bool drawn_ = false;
  Clock::time_point start_ = Clock::now(), last_draw_{};
};

}  // namespace sweep

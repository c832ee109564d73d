// The sweep's progress bar on stderr: point i/n and its key (each running point's, with
// --jobs), step, loss, steps/s and the ETA of the whole sweep. On a terminal it redraws one line in place (\r); otherwise (CI logs,
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
#include <vector>

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

}  // namespace sweep

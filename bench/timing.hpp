// lora_bench's timing: a steady clock, medians, the median of paired ratios, and the waits
// that keep one measurement from disturbing the next.
#pragma once

#include <torch/cuda.h>
#include <torch/types.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

namespace bench {

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/// median over i of a[i] / b[i]: pairs measured back to back.
inline double median_ratio(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> r;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) r.push_back(a[i] / b[i]);
  return median(r);
}

/// Waits for the device's queued work, so that a clock read after it times the work.
inline void synchronize(const torch::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize();
}

/// Lets the thread pools of the previous process go idle (OpenBLAS threads spin for a while
/// after a call) before the next process starts timing.
inline void settle() { std::this_thread::sleep_for(std::chrono::milliseconds(250)); }

}  // namespace bench

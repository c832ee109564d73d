// lora_bench's description of the machine, from /proc and the scheduler. The parent process
// uses it before forking: nothing here runs a LibTorch kernel.
#pragma once

#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace bench {

/// The CPU's model name from /proc/cpuinfo.
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

/// The first line of the file at `p` ("" when it cannot be read).
inline std::string first_line(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::string line;
  std::getline(in, line);
  return line;
}

/// The value of field `key` in /proc/self/status, e.g. "123456 kB" for "VmHWM".
inline std::string proc_status_field(const std::string& key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key + ":", 0) == 0) {
      auto v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return "";
}

/// VmHWM / VmRSS of this process in MiB.
inline double proc_mib(const std::string& key) { return std::atof(proc_status_field(key).c_str()) / 1024.0; }

/// The CPUs this process may run on.
inline int cpus_allowed() {
  cpu_set_t set;
  CPU_ZERO(&set);
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
}

/// The first line of /proc/loadavg: the load averages over 1, 5 and 15 minutes, and more.
inline std::string load_average() { return first_line("/proc/loadavg"); }

}  // namespace bench

// lora_bench's harness: every measurement runs in a Worker, a child process forked before the
// parent touches LibTorch's compute (so OpenMP/OpenBLAS thread pools and CUDA start fresh in
// each), that answers JSON commands, one per line, over pipes. Each side of a comparison has
// its own process, so its peak RSS (VmHWM) is its own.
#pragma once

#include <malloc.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <fd_io.hpp>
#include <perf/allocator.hpp>
#include <perf/blas.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>

#include "machine.hpp"
#include "options.hpp"
#include "timing.hpp"

namespace bench {

using json = nlohmann::json;

/// What a worker does with a command: the reply.
using Handler = std::function<json(const json&)>;

inline void apply_threads(const Options& o) {
  const int cores = cpus_allowed();
  torch::set_num_threads(o.threads > 0 ? o.threads : cores);  // 0: one per core
  perf::set_blas_threads(o.blas_threads > 0 ? o.blas_threads : cores);
}

inline void write_line(int fd, const std::string& s) {
  if (!examples::write_all(fd, s + "\n"))
    throw std::runtime_error(std::string("pipe write failed: ") + std::strerror(errno));
}

inline bool read_line(FILE* f, std::string& out) {
  out.clear();
  for (int c; (c = std::fgetc(f)) != EOF;) {
    if (c == '\n') return true;
    out.push_back(static_cast<char>(c));
  }
  return !out.empty();
}

class Worker {
 public:
  /// Forks. The child applies the thread settings, builds its handler with `make` on the
  /// first command ("setup") and then answers commands until "quit".
  Worker(std::string name, std::function<Handler()> make, const Options& o) : name_(std::move(name)) {
    int to[2], from[2];
    if (pipe(to) != 0 || pipe(from) != 0) throw std::runtime_error("pipe failed");
    std::fflush(nullptr);
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::close(to[1]);
      ::close(from[0]);
      serve(to[0], from[1], make, o);
    }
    ::close(to[0]);
    ::close(from[1]);
    out_ = to[1];
    in_ = fdopen(from[0], "r");
    const auto t0 = clock_type::now();
    auto r = call({{"op", "setup"}});
    setup_s_ = seconds_since(t0);
    info_ = r;
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  ~Worker() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (in_) std::fclose(in_);
    if (out_ >= 0) ::close(out_);
  }

  json call(const json& cmd) {
    write_line(out_, cmd.dump());
    std::string line;
    if (!read_line(in_, line)) throw std::runtime_error(name_ + ": the worker process died (see its messages above)");
    auto r = json::parse(line);
    if (r.contains("error")) throw std::runtime_error(name_ + ": " + r["error"].get<std::string>());
    return r;
  }

  /// Ends the child; returns its last report (peak RSS, ...).
  json finish() {
    auto r = call({{"op", "quit"}});
    int status = 0;
    struct rusage ru {};
    wait4(pid_, &status, 0, &ru);
    r["ru_maxrss_mib"] = static_cast<double>(ru.ru_maxrss) / 1024.0;
    pid_ = -1;
    return r;
  }

  const json& info() const { return info_; }

 private:
  [[noreturn]] static void serve(int in_fd, int out_fd, const std::function<Handler()>& make, const Options& o) {
    FILE* in = fdopen(in_fd, "r");
    Handler handler;
    std::string line;
    int code = 0;
    while (read_line(in, line)) {
      json reply;
      try {
        const auto cmd = json::parse(line);
        const auto op = cmd.value("op", "");
        if (op == "setup") {
          const double rss0 = proc_mib("VmRSS");
          if (o.allocator == "caching") perf::use_caching_cpu_allocator();
          if (o.allocator == "glibc-keep") mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, -1);
          apply_threads(o);
          handler = make();
          reply = {{"ok", true},
                   {"rss_at_start_mib", rss0},
                   {"torch_threads", torch::get_num_threads()},
                   {"blas_threads", perf::blas_threads()}};
        } else if (op == "quit") {
          const auto st = perf::CachingCpuAllocator::instance().stats();
          reply = {{"vm_hwm_mib", proc_mib("VmHWM")},
                   {"vm_rss_mib", proc_mib("VmRSS")},
                   {"cache_mapped_mib", static_cast<double>(st.mapped) / (1 << 20)},
                   {"cache_peak_in_use_mib", static_cast<double>(st.peak_in_use) / (1 << 20)},
                   {"cache_hits", st.hits},
                   {"cache_misses", st.misses},
                   {"cache_evictions", st.evictions}};
          write_line(out_fd, reply.dump());
          break;
        } else {
          if (!handler) throw std::runtime_error("no handler");
          reply = handler(cmd);
        }
      } catch (const std::exception& e) {
        reply = {{"error", e.what()}};
        code = 1;
      }
      write_line(out_fd, reply.dump());
    }
    std::fflush(nullptr);
    _exit(code);
  }

  std::string name_;
  pid_t pid_ = -1;
  int out_ = -1;
  FILE* in_ = nullptr;
  double setup_s_ = 0;
  json info_;
};

}  // namespace bench

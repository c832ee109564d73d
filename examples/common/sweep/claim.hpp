// A claim on one grid point while it trains, so that two processes working on the same --out
// (two --jobs workers, two shells started by mistake, two overlapping shards) never train the
// same point: an exclusive flock() on out/locks/<key>.lock. The kernel drops the lock when the
// holder exits or is killed, so a crashed run never leaves a point claimed; the lock files
// themselves stay (removing a lock file that another process may be opening is a race).
#pragma once

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <lora/error.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>

#include "errors.hpp"

namespace sweep {

class PointClaim {
 public:
  /// Claims `lock_file` (created when absent) without waiting: nothing when another process
  /// holds it. Throws examples::FileError when the file cannot be created.
  static std::optional<PointClaim> try_claim(const std::filesystem::path& lock_file) {
    const int fd = ::open(lock_file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
      throw examples::FileError("cannot create the lock file '" + lock_file.string() + "': " + std::strerror(errno) +
                                ". Check that --out is writable.");
    while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) return std::nullopt;
      throw examples::FileError("cannot lock '" + lock_file.string() + "': " + std::strerror(err) +
                                ". Use a local file system for --out (flock is needed).");
    }
    return PointClaim(fd);
  }

  PointClaim(PointClaim&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  PointClaim& operator=(PointClaim&& other) noexcept {
    if (this != &other) {
      release();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  PointClaim(const PointClaim&) = delete;
  PointClaim& operator=(const PointClaim&) = delete;
  ~PointClaim() { release(); }

 private:
  explicit PointClaim(int fd) : fd_(fd) {}
  void release() {
    if (fd_ >= 0) ::close(fd_);  // closing the last descriptor drops the flock
    fd_ = -1;
  }
  int fd_ = -1;
};

}  // namespace sweep

// File helpers of the library: an EINTR-safe write loop and atomic file replacement. Every
// failure is a lora::FileError. lora/io.hpp builds the public helpers on them.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "../error.hpp"

namespace lora::detail {

/// The strerror() text of `err`.
inline std::string os_error(int err) { return std::strerror(err); }

/// Writes all of `data[0, size)` to `fd`, retrying after EINTR; returns false (errno set) on failure.
inline bool write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = EIO;
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

/// Replaces the file at `path` atomically: `write(fd)` fills "<path>.tmp.<pid>" (returning false,
/// errno set, on failure), which is then flushed to disk and renamed over `path`, and the folder
/// is flushed so that the rename itself survives a crash. Readers see the old file or the whole
/// new one, never a part. On any error the temporary file is removed and FileError names `what`
/// (e.g. "safetensors file") and `path`.
template <typename Writer>
void write_file_atomic(const std::string& path, const char* what, Writer&& write) {
  const std::string tmp = str(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) throw FileError(str("cannot create '", tmp, "' to save '", path, "': ", os_error(errno)));
  const bool ok = write(fd) && ::fsync(fd) == 0;
  int err = ok ? 0 : errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    throw FileError(str("cannot save ", what, " '", path, "': ", os_error(err)));
  }
  const auto slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {  // best effort: the file is complete either way
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace lora::detail

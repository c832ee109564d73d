// Writing to a pipe or file descriptor, as the sweeps' --jobs workers and lora_bench's workers
// do: every byte, retrying after EINTR and short writes. POSIX only, no LibTorch.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string>

namespace examples {

/// Writes all of `data` to `fd`. False when a write fails (errno says why) or writes nothing
/// (the reader is gone).
inline bool write_all(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace examples

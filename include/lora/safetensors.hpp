// Reading and writing .safetensors files (https://github.com/huggingface/safetensors):
// safetensors::File (a validated, memory-mapped file), load() and save(). TensorInfo and the
// dtype names (dtype_from_string, dtype_to_string) are in safetensors_types.hpp; the header's
// parsing, validation and layout in detail/safetensors_format.hpp. Reading memory-maps the file (POSIX); every error is a
// lora::FileError that names the file.
#pragma once

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <torch/ordered_dict.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "detail/file_io.hpp"
#include "detail/safetensors_format.hpp"
#include "safetensors_types.hpp"
#include "error.hpp"

namespace lora::safetensors {


/// A validated .safetensors file, memory-mapped (or held in memory, from_bytes).
class File {
 public:
  /// Maps the file at `path` and validates its header.
  explicit File(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw FileError(detail::str("cannot open safetensors file '", path, "': ", detail::os_error(errno)));
    try {
      map_file(fd);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
    index(detail::parse_header(data_, size_, path_));
  }

  /// Validates an in-memory file image; `name` stands for the path in messages.
  static File from_bytes(std::string bytes, std::string name = "<memory>") {
    File f;
    f.path_ = std::move(name);
    f.bytes_ = std::make_unique<const std::string>(std::move(bytes));
    f.data_ = f.bytes_->data();
    f.size_ = f.bytes_->size();
    f.index(detail::parse_header(f.data_, f.size_, f.path_));
    return f;
  }

  File(File&&) noexcept = default;
  File& operator=(File&&) noexcept = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  /// The path given (or the name given to from_bytes).
  const std::string& path() const { return path_; }
  /// Every tensor's entry, in data-offset order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// The "__metadata__" entries (empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Whether a tensor is called `name`.
  bool contains(const std::string& name) const { return by_name_.count(name) != 0; }

  /// The entry of tensor `name`; throws FileError if there is none.
  const TensorInfo& info(const std::string& name) const {
    const auto it = by_name_.find(name);
    if (it == by_name_.end())
      throw FileError(detail::str("safetensors file '", path_, "' has no tensor named '", name, "' (it holds ",
                                  tensors_.size(), " tensors)"));
    return tensors_[it->second];
  }

  /// A CPU tensor holding a copy of tensor `name`'s data.
  at::Tensor tensor(const std::string& name) const {
    const TensorInfo& t = info(name);
    const at::ScalarType type = dtype_from_string(t.dtype);
    // Bools are read as bytes and compared with 0, so that no byte other than 0/1 reaches a kBool tensor.
    at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(type == at::kBool ? at::kByte : type));
    if (t.end > t.begin) std::memcpy(out.data_ptr(), data_ + data_start_ + t.begin, t.end - t.begin);
    return type == at::kBool ? out.ne(0) : out;
  }

 private:
  File() = default;

  /// mmap()s the open file `fd` into data_/size_ (nothing for an empty file).
  void map_file(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0)
      throw FileError(detail::str("cannot stat safetensors file '", path_, "': ", detail::os_error(errno)));
    if (!S_ISREG(st.st_mode)) throw FileError(detail::str("safetensors file '", path_, "' is not a regular file"));
    size_ = static_cast<size_t>(st.st_size);
    if (size_ == 0) return;
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
      throw FileError(detail::str("cannot memory-map safetensors file '", path_, "': ", detail::os_error(errno)));
    map_ = std::unique_ptr<void, detail::Unmap>(p, detail::Unmap{size_});
    data_ = static_cast<const char*>(p);
  }

  /// Takes over a parsed header and indexes its tensors by name.
  void index(detail::SafetensorsHeader header) {
    tensors_ = std::move(header.tensors);
    metadata_ = std::move(header.metadata);
    data_start_ = header.data_start;
    for (size_t i = 0; i < tensors_.size(); ++i) by_name_.emplace(tensors_[i].name, i);
  }

  std::string path_;
  std::unique_ptr<void, detail::Unmap> map_{nullptr, detail::Unmap{}};  // the mapping, for File(path)
  std::unique_ptr<const std::string> bytes_;                             // the image, for from_bytes
  const char* data_ = "";
  size_t size_ = 0;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
};

/// Every tensor of the file at `path`, in file order.
inline torch::OrderedDict<std::string, at::Tensor> load(const std::string& path) {
  const File file(path);
  torch::OrderedDict<std::string, at::Tensor> out("Tensor");
  out.reserve(file.tensors().size());
  for (const auto& t : file.tensors()) out.insert(t.name, file.tensor(t.name));
  return out;
}


/// Writes `tensors` (any device, a supported dtype) and `metadata` to `path` atomically: to
/// "<path>.tmp.<pid>", then renamed over `path`. Throws FileError on I/O failure.
inline void save(const std::string& path, const torch::OrderedDict<std::string, at::Tensor>& tensors,
                 const std::map<std::string, std::string>& metadata = {}) {
  const auto pending = detail::prepare_tensors(tensors);
  const std::string header = detail::header_json(pending, metadata);
  detail::write_file_atomic(path, "safetensors file",
                                  [&](int fd) { return detail::write_safetensors(fd, header, pending); });
}

}  // namespace lora::safetensors

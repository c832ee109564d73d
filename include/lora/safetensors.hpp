// Reading and writing .safetensors files (https://github.com/huggingface/safetensors):
// safetensors::File (a validated, memory-mapped file), load() and save(). The format, its
// validation, TensorInfo and the dtype names (dtype_from_string, dtype_to_string) are in
// detail/safetensors_header.hpp. Reading memory-maps the file (POSIX); every error is a
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
#include "detail/safetensors_header.hpp"
#include "error.hpp"

namespace lora::safetensors {

namespace detail {

/// munmap()s a mapping of `size` bytes.
struct Unmap {
  size_t size = 0;
  void operator()(void* p) const {
    if (p) ::munmap(p, size);
  }
};

using lora::detail::os_error;
using lora::detail::write_all;

}  // namespace detail

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
  void index(detail::Header header) {
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

namespace detail {

/// A tensor ready to write: contiguous on the CPU, with its dtype entry.
struct Pending {
  std::string name;
  at::Tensor data;
  const DtypeEntry* dtype;
};

/// CPU contiguous copies of `tensors` in the Rust crate's file order: dtype rank descending
/// (so every tensor's offset is a multiple of its element size), then name.
inline std::vector<Pending> prepare(const torch::OrderedDict<std::string, at::Tensor>& tensors) {
  std::vector<Pending> out;
  for (const auto& item : tensors) {
    if (item.key() == "__metadata__") throw Error("a tensor cannot be called \"__metadata__\" in safetensors");
    if (!item.value().defined()) throw Error(str("tensor '", item.key(), "' is undefined; cannot save it"));
    const DtypeEntry* d = find_dtype(dtype_to_string(item.value().scalar_type()));  // throws if unsupported
    out.push_back({item.key(), item.value().detach().to(at::kCPU).contiguous(), d});
  }
  std::sort(out.begin(), out.end(), [](const Pending& a, const Pending& b) {
    return a.dtype->rank != b.dtype->rank ? a.dtype->rank > b.dtype->rank : a.name < b.name;
  });
  return out;
}

/// `s` as a JSON string literal; throws lora::Error when it is not valid UTF-8.
inline std::string json_string(const std::string& s) {
  try {
    return nlohmann::json(s).dump();
  } catch (const nlohmann::json::exception&) {
    throw Error(str("cannot save safetensors: '", s, "' (a tensor name or metadata entry) is not valid UTF-8"));
  }
}

/// The header JSON for `tensors` laid out back to back, padded with spaces to a multiple of 8
/// bytes: byte for byte what the Rust crate writes.
inline std::string header_json(const std::vector<Pending>& tensors, const std::map<std::string, std::string>& metadata) {
  std::vector<std::string> entries;
  if (!metadata.empty()) {
    std::vector<std::string> kv;
    for (const auto& [k, v] : metadata) kv.push_back(json_string(k) + ":" + json_string(v));
    entries.push_back("\"__metadata__\":{" + c10::Join(",", kv) + "}");
  }
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const uint64_t end = offset + t.data.nbytes();
    entries.push_back(str(json_string(t.name), ":{\"dtype\":\"", t.dtype->name, "\",\"shape\":[",
                          c10::Join(",", t.data.sizes()), "],\"data_offsets\":[", offset, ",", end, "]}"));
    offset = end;
  }
  std::string out = "{" + c10::Join(",", entries) + "}";
  out.append((8 - out.size() % 8) % 8, ' ');
  return out;
}

/// Writes the header length, header and tensor bytes to `fd`.
inline bool write_file(int fd, const std::string& header, const std::vector<Pending>& tensors) {
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  if (!write_all(fd, length, 8) || !write_all(fd, header.data(), header.size())) return false;
  for (const auto& t : tensors)
    if (!write_all(fd, t.data.data_ptr(), t.data.nbytes())) return false;
  return true;
}

}  // namespace detail

/// Writes `tensors` (any device, a supported dtype) and `metadata` to `path` atomically: to
/// "<path>.tmp.<pid>", then renamed over `path`. Throws FileError on I/O failure.
inline void save(const std::string& path, const torch::OrderedDict<std::string, at::Tensor>& tensors,
                 const std::map<std::string, std::string>& metadata = {}) {
  const auto pending = detail::prepare(tensors);
  const std::string header = detail::header_json(pending, metadata);
  lora::detail::write_file_atomic(path, "safetensors file",
                                  [&](int fd) { return detail::write_file(fd, header, pending); });
}

}  // namespace lora::safetensors

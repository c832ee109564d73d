// The safetensors header (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON describing each tensor (dtype, shape, byte offsets into the
// data section), then the data section. Parsing and validation follow the reference Rust crate:
// the tensors must tile the data section exactly, with no gap, overlap or trailing byte. Every
// error is a lora::FileError that names the file. Writing lays out the header and the data the
// way the Rust crate does. lora/safetensors.hpp reads and writes files with these.
#pragma once

#include <ATen/ATen.h>
#include <sys/mman.h>
#include <torch/ordered_dict.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../safetensors_types.hpp"
#include "file_io.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "lora/safetensors.hpp assumes a little-endian host (safetensors data is little-endian)"
#endif

namespace lora::detail {

/// Largest header accepted, as in the Rust crate.
constexpr uint64_t kMaxHeaderSize = 100'000'000;
/// Deepest JSON nesting accepted (serde_json's recursion limit).
constexpr size_t kMaxJsonDepth = 128;

/// Throws a FileError "safetensors file '<name>': <parts...>".
template <typename... Args>
[[noreturn]] void fail(const std::string& name, Args&&... parts) {
  throw FileError(str("safetensors file '", name, "': ", std::forward<Args>(parts)...));
}

/// A short rendering of a JSON value for messages: "a number (1.5)", "an array ([1,2])", "null".
inline std::string describe(const nlohmann::json& v) {
  if (v.is_null()) return "null";
  std::string text = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  const std::string type = v.type_name();
  return str(type[0] == 'a' || type[0] == 'o' ? "an " : "a ", type, " (", text, ")");
}

/// Reads a little-endian u64.
inline uint64_t read_u64_le(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

/// Parses the JSON header text, rejecting duplicate keys and nesting deeper than kMaxJsonDepth.
inline nlohmann::json parse_json(const char* begin, const char* end, const std::string& name) {
  using Event = nlohmann::json::parse_event_t;
  std::vector<std::set<std::string>> keys;  // the keys seen so far in each open object
  size_t depth = 0;
  auto check = [&](int, Event event, nlohmann::json& parsed) {
    switch (event) {
      case Event::object_start:
        keys.emplace_back();
        [[fallthrough]];
      case Event::array_start:
        if (++depth > kMaxJsonDepth) fail(name, "the JSON header nests deeper than ", kMaxJsonDepth, " levels");
        break;
      case Event::object_end:
        keys.pop_back();
        [[fallthrough]];
      case Event::array_end:
        --depth;
        break;
      case Event::key:
        if (!keys.back().insert(parsed.get<std::string>()).second)
          fail(name, "duplicate key '", parsed.get<std::string>(), "' in the JSON header; keys must be unique");
        break;
      case Event::value:
        break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(begin, end, check);
  } catch (const nlohmann::json::exception& e) {
    std::string why = e.what();
    if (why.size() > 200) why = why.substr(0, 197) + "...";
    fail(name, "the header is not valid JSON (", why, "); expected a JSON object");
  }
}

/// The "__metadata__" entry: null or an object of string values.
inline std::map<std::string, std::string> parse_metadata(const nlohmann::json& v, const std::string& name) {
  std::map<std::string, std::string> out;
  if (v.is_null()) return out;
  if (!v.is_object()) fail(name, "\"__metadata__\" is ", describe(v), "; expected an object of strings");
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it->is_string())
      fail(name, "\"__metadata__\" value for key '", it.key(), "' is ", describe(*it), "; expected a string");
    out.emplace(it.key(), it->get<std::string>());
  }
  return out;
}

/// A non-negative integer field element (a shape dimension or an offset) of tensor `tensor`.
inline uint64_t read_index(const nlohmann::json& v, const std::string& tensor, const char* field,
                           const std::string& name) {
  if (!v.is_number_unsigned())
    fail(name, "tensor '", tensor, "': ", field, " holds ", describe(v), "; expected a non-negative integer");
  return v.get<uint64_t>();
}

/// The field `field` of entry `entry`, required to be an array (of `count` elements unless 0).
inline const nlohmann::json& read_array(const nlohmann::json& entry, const char* field, size_t count,
                                        const std::string& tensor, const std::string& name) {
  const auto it = entry.find(field);
  if (it == entry.end()) fail(name, "tensor '", tensor, "' has no \"", field, "\"");
  if (!it->is_array() || (count && it->size() != count))
    fail(name, "tensor '", tensor, "': \"", field, "\" is ", describe(*it), "; expected an array",
         count ? str(" of ", count, " integers") : std::string(" of integers"));
  return *it;
}

/// Reads the dtype field of entry `entry` and checks it is supported.
inline const safetensors::DtypeInfo& read_dtype(const nlohmann::json& entry, const std::string& tensor, const std::string& name) {
  const auto it = entry.find("dtype");
  if (it == entry.end()) fail(name, "tensor '", tensor, "' has no \"dtype\"");
  if (!it->is_string()) fail(name, "tensor '", tensor, "': \"dtype\" is ", describe(*it), "; expected a string");
  const safetensors::DtypeInfo* d = safetensors::find_dtype(it->get<std::string>());
  if (!d)
    fail(name, "tensor '", tensor, "' has unknown or unsupported dtype '", it->get<std::string>(),
         "'; expected one of ", safetensors::dtype_names());
  return *d;
}

/// Bytes needed by `shape` elements of `size` bytes each; fails on 64-bit overflow.
inline uint64_t byte_count(const std::vector<int64_t>& shape, uint64_t size, const std::string& tensor,
                           const std::string& name) {
  uint64_t n = size;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n))
      fail(name, "tensor '", tensor, "': its shape holds more bytes than fit in 64 bits");
  }
  return n;
}

/// Validates one tensor entry against itself and the data section size.
inline safetensors::TensorInfo parse_entry(const std::string& tensor, const nlohmann::json& entry, uint64_t data_size,
                              const std::string& name) {
  if (!entry.is_object())
    fail(name, "entry '", tensor, "' is ", describe(entry), "; expected an object with dtype, shape and data_offsets");
  safetensors::TensorInfo info;
  info.name = tensor;
  const safetensors::DtypeInfo& dtype = read_dtype(entry, tensor, name);
  info.dtype = dtype.name;
  for (const auto& d : read_array(entry, "shape", 0, tensor, name)) {
    const uint64_t dim = read_index(d, tensor, "shape", name);
    if (dim > static_cast<uint64_t>(INT64_MAX)) fail(name, "tensor '", tensor, "': shape dimension ", dim, " is too large");
    info.shape.push_back(static_cast<int64_t>(dim));
  }
  const auto& offsets = read_array(entry, "data_offsets", 2, tensor, name);
  info.begin = read_index(offsets[0], tensor, "data_offsets", name);
  info.end = read_index(offsets[1], tensor, "data_offsets", name);
  if (info.begin > info.end)
    fail(name, "tensor '", tensor, "': data_offsets [", info.begin, ", ", info.end, "] begin after they end");
  const uint64_t nbytes = byte_count(info.shape, dtype.size, tensor, name);
  if (nbytes != info.end - info.begin)
    fail(name, "tensor '", tensor, "': shape ", at::IntArrayRef(info.shape), " of ", dtype.name, " needs ", nbytes,
         " bytes but data_offsets [", info.begin, ", ", info.end, "] span ", info.end - info.begin);
  if (info.end > data_size)
    fail(name, "tensor '", tensor, "': data_offsets end ", info.end, " is beyond the data section (", data_size,
         " bytes); the file is truncated or the offsets are wrong");
  return info;
}

/// Sorts `tensors` by offset and checks that they tile [0, data_size) exactly.
inline void check_layout(std::vector<safetensors::TensorInfo>& tensors, uint64_t data_size, const std::string& name) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const safetensors::TensorInfo& a, const safetensors::TensorInfo& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t at = 0;
  std::string previous = "the start of the data section";
  for (const auto& t : tensors) {
    if (t.begin > at) fail(name, "gap of ", t.begin - at, " bytes between ", previous, " and tensor '", t.name,
                           "'; expected the tensors to cover the data section contiguously");
    if (t.begin < at) fail(name, "tensor '", t.name, "' (data_offsets [", t.begin, ", ", t.end, "]) overlaps ",
                           previous, ", which ends at ", at, "; expected tensors not to overlap");
    at = t.end;
    previous = str("tensor '", t.name, "'");
  }
  if (at != data_size)
    fail(name, "the data section holds ", data_size, " bytes but ",
         tensors.empty() ? std::string("there is no tensor") : str("the last tensor, '", tensors.back().name, "', ends at ", at),
         "; expected the tensors to cover the data section exactly");
}

/// A validated header: tensors in data-offset order, metadata, and where the data section starts.
struct SafetensorsHeader {
  std::vector<safetensors::TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;
};

/// Parses and validates the whole file image `data[0, size)` named `name` (for messages).
/// Touches no tensor memory: the fuzzer drives this.
inline SafetensorsHeader parse_header(const char* data, size_t size, const std::string& name) {
  if (size < 8) fail(name, "the file is ", size, " bytes long; expected at least 8 (the header length)");
  const uint64_t n = read_u64_le(data);
  if (n > kMaxHeaderSize) fail(name, "header length ", n, " is absurdly large; expected at most ", kMaxHeaderSize);
  if (n > size - 8)
    fail(name, "header length ", n, " goes beyond the end of the file (", size,
         " bytes); the file is truncated or not a safetensors file");
  const nlohmann::json root = parse_json(data + 8, data + 8 + n, name);
  if (!root.is_object()) fail(name, "the header is ", describe(root), "; expected a JSON object");
  SafetensorsHeader header;
  header.data_start = 8 + n;
  const uint64_t data_size = size - header.data_start;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__")
      header.metadata = parse_metadata(*it, name);
    else
      header.tensors.push_back(parse_entry(it.key(), *it, data_size, name));
  }
  check_layout(header.tensors, data_size, name);
  return header;
}

// Writing.

/// munmap()s a mapping of `size` bytes.
struct Unmap {
  size_t size = 0;
  void operator()(void* p) const {
    if (p) ::munmap(p, size);
  }
};

/// A tensor ready to write: contiguous on the CPU, with its dtype entry.
struct PendingTensor {
  std::string name;
  at::Tensor data;
  const safetensors::DtypeInfo* dtype;
};

/// CPU contiguous copies of `tensors` in the Rust crate's file order: dtype rank descending
/// (so every tensor's offset is a multiple of its element size), then name.
inline std::vector<PendingTensor> prepare_tensors(const torch::OrderedDict<std::string, at::Tensor>& tensors) {
  std::vector<PendingTensor> out;
  for (const auto& item : tensors) {
    if (item.key() == "__metadata__") throw Error("a tensor cannot be called \"__metadata__\" in safetensors");
    if (!item.value().defined()) throw Error(str("tensor '", item.key(), "' is undefined; cannot save it"));
    const safetensors::DtypeInfo* d = safetensors::find_dtype(safetensors::dtype_to_string(item.value().scalar_type()));  // throws if unsupported
    out.push_back({item.key(), item.value().detach().to(at::kCPU).contiguous(), d});
  }
  std::sort(out.begin(), out.end(), [](const PendingTensor& a, const PendingTensor& b) {
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
inline std::string header_json(const std::vector<PendingTensor>& tensors, const std::map<std::string, std::string>& metadata) {
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
inline bool write_safetensors(int fd, const std::string& header, const std::vector<PendingTensor>& tensors) {
  char length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  if (!write_all(fd, length, 8) || !write_all(fd, header.data(), header.size())) return false;
  for (const auto& t : tensors)
    if (!write_all(fd, t.data.data_ptr(), t.data.nbytes())) return false;
  return true;
}

}  // namespace lora::detail

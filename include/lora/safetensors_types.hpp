// The safetensors format's vocabulary, as users name it: a tensor's header entry (TensorInfo)
// and the dtypes both safetensors and LibTorch know, with their names ("F32", "BF16", ...).
// lora/safetensors.hpp reads and writes files; detail/safetensors_format.hpp parses and lays
// out the header.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"

namespace lora::safetensors {

/// One tensor's entry in the header.
struct TensorInfo {
  std::string name;
  std::string dtype;  ///< "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8" or "BOOL"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  ///< byte offsets in the data section
};


/// A dtype both safetensors and LibTorch know. `rank` is its position in the Rust crate's Dtype
/// enum, which orders tensors in a written file (descending, so each one stays aligned).
struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  uint64_t size;
  int rank;
};

/// Every supported dtype.
inline const std::vector<DtypeInfo>& dtypes() {
  static const std::vector<DtypeInfo> table = {
      {"BOOL", at::kBool, 1, 0},     {"U8", at::kByte, 1, 1},    {"I8", at::kChar, 1, 2},
      {"I16", at::kShort, 2, 5},     {"F16", at::kHalf, 2, 7},   {"BF16", at::kBFloat16, 2, 8},
      {"I32", at::kInt, 4, 9},       {"F32", at::kFloat, 4, 11}, {"F64", at::kDouble, 8, 12},
      {"I64", at::kLong, 8, 13},
  };
  return table;
}

/// The table entry named `name`, or nullptr.
inline const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& e : dtypes())
    if (name == e.name) return &e;
  return nullptr;
}

/// The table entry for `type`, or nullptr.
inline const DtypeInfo* find_dtype(at::ScalarType type) {
  for (const auto& e : dtypes())
    if (type == e.type) return &e;
  return nullptr;
}

/// "F64, F32, ...": the supported names, for messages.
inline std::string dtype_names() {
  std::string out;
  for (const auto& e : dtypes()) out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

/// The ScalarType of a safetensors dtype name; throws FileError for an unknown one.
inline at::ScalarType dtype_from_string(const std::string& s) {
  if (const auto* d = find_dtype(s)) return d->type;
  throw FileError(detail::str("unknown or unsupported safetensors dtype '", s, "'; expected one of ",
                              dtype_names()));
}

/// The safetensors dtype name of a ScalarType; throws lora::Error for an unsupported one.
inline std::string dtype_to_string(at::ScalarType t) {
  if (const auto* d = find_dtype(t)) return d->name;
  throw Error(detail::str("dtype ", t, " cannot be stored in safetensors; supported: ", dtype_names()));
}

}  // namespace lora::safetensors

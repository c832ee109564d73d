// libFuzzer harness for lora::safetensors: parses arbitrary bytes with File::from_bytes and, when
// they pass validation, materialises every tensor and checks it against its header entry.
// The only acceptable failure is a lora::FileError; anything else (a crash, a sanitizer report,
// another exception, a broken invariant) is a bug.
//
// Built with -DLORA_FUZZ_SEED_MAIN instead, the same file is a small program that writes a seed
// corpus of valid files (through lora::safetensors::save) and a libFuzzer dictionary.
// See docs/fuzzing.md.
#include <lora/safetensors.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

#ifndef LORA_FUZZ_SEED_MAIN

namespace {

/// Aborts (a crash libFuzzer reports) when a validated file yields a tensor unlike its entry.
void check_tensor(const lora::safetensors::File& file, const lora::safetensors::TensorInfo& info) {
  const at::Tensor t = file.tensor(info.name);
  const bool ok = t.scalar_type() == lora::safetensors::dtype_from_string(info.dtype) &&
                  t.sizes() == at::IntArrayRef(info.shape) && t.nbytes() == info.end - info.begin &&
                  t.device().is_cpu() && t.is_contiguous();
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = lora::safetensors::File::from_bytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const auto& info : file.tensors()) check_tensor(file, info);
  } catch (const lora::FileError&) {
    // Rejected input: expected.
  }
  return 0;
}

#else  // LORA_FUZZ_SEED_MAIN

#include <filesystem>
#include <fstream>
#include <iostream>

namespace {

using Tensors = torch::OrderedDict<std::string, at::Tensor>;

/// A few tensors of every supported dtype, including a scalar and a zero-size one.
Tensors every_dtype() {
  Tensors out;
  for (const auto& d : lora::safetensors::dtypes()) {
    const std::string name = d.name;
    out.insert(name + ".m", at::arange(6, at::kInt).reshape({2, 3}).to(d.type));
    out.insert(name + ".s", at::ones({}, at::kInt).to(d.type));
    out.insert(name + ".z", at::zeros({0, 3}, d.type));
  }
  return out;
}

/// Writes the seed files into `dir`.
void write_seeds(const std::filesystem::path& dir) {
  namespace st = lora::safetensors;
  std::filesystem::create_directories(dir);
  Tensors one;
  one.insert("attn.0", at::arange(6, at::kFloat).reshape({1, 2, 3}));
  st::save((dir / "empty.safetensors").string(), Tensors());
  st::save((dir / "metadata_only.safetensors").string(), Tensors(), {{"format", "pt"}});
  st::save((dir / "one_f32.safetensors").string(), one);
  st::save((dir / "one_f32_meta.safetensors").string(), one, {{"format", "pt"}, {"note", "seed"}});
  st::save((dir / "every_dtype.safetensors").string(), every_dtype());
}

/// One dictionary line: `token` quoted, with '"' and '\\' escaped.
std::string dictionary_entry(const std::string& token) {
  std::string out = "\"";
  for (char c : token) out += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return out + "\"\n";
}

/// Writes a libFuzzer dictionary of the header's tokens to `path`.
void write_dictionary(const std::string& path) {
  std::ofstream out(path);
  for (const char* token : {"\"dtype\":", "\"shape\":", "\"data_offsets\":", "\"__metadata__\":", "{", "}", "[",
                            "]", ",", "null", "-1", "1.5", "18446744073709551615", "9223372036854775808"})
    out << dictionary_entry(token);
  for (const auto& d : lora::safetensors::dtypes()) out << dictionary_entry(std::string("\"") + d.name + "\"");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " CORPUS_DIR DICTIONARY_FILE\n";
    return 2;
  }
  write_seeds(argv[1]);
  write_dictionary(argv[2]);
  return 0;
}

#endif  // LORA_FUZZ_SEED_MAIN

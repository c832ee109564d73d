// Shared by the reader harnesses (readers_fuzz.cpp, model_files_fuzz.cpp): the input as files,
// the checks every harness makes, and seed/dictionary writing.
//
// A harness passes the fuzzer's bytes to a reader as the reader would meet them (a file on
// disk). The acceptable outcomes are a successful read whose result passes the harness's checks,
// or an error of the kind the reader throws (lora::Error from the library, examples::Error from
// the example code) whose message names the file (its path) — the "where" of the error (line, byte
// offset or key) is checked by the regression tests in tests/examples. Anything else aborts,
// which libFuzzer reports as a crash: another exception, an error that does not name the file,
// a broken invariant, as do sanitizer reports, timeouts (-timeout) and memory blow-ups
// (-rss_limit_mb / -malloc_limit_mb).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fuzz {

namespace fs = std::filesystem;

/// A folder of this process's own under $TMPDIR (default /tmp), made once.
inline const fs::path& work_dir() {
  static const fs::path dir = [] {
    const char* t = std::getenv("TMPDIR");
    fs::path d = fs::path(t && *t ? t : "/tmp") / ("lora_fuzz_" + std::to_string(::getpid()));
    fs::create_directories(d);
    return d;
  }();
  return dir;
}

/// Writes `bytes` to `path` (aborting when it cannot) and returns the path.
inline std::string write_to(const fs::path& file, const std::string& bytes) {
  const auto path = file.string();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
  std::fclose(f);
  return path;
}

/// Writes `bytes` to work_dir()/name and returns the path.
inline std::string write_file(const std::string& name, const std::string& bytes) { return write_to(work_dir() / name, bytes); }

/// Reports a broken expectation and aborts (a crash for libFuzzer).
[[noreturn]] inline void bug(const std::string& what) {
  std::fprintf(stderr, "\nFUZZ CHECK FAILED: %s\n", what.c_str());
  std::abort();
}

inline void expect(bool ok, const std::string& what) {
  if (!ok) bug(what);
}

/// A rejected input: the error must name one of `paths`.
inline void rejected(const std::exception& e, const std::vector<std::string>& paths) {
  const std::string msg = e.what();
  for (const auto& p : paths)
    if (msg.find(p) != std::string::npos) return;
  bug("the error does not name the file: " + msg);
}

/// The bytes `data[0, size)` as a string.
inline std::string bytes(const uint8_t* data, size_t size) { return std::string(reinterpret_cast<const char*>(data), size); }

/// Splits `in` at the first `sep` (the second part empty when absent).
inline std::pair<std::string, std::string> split(const std::string& in, const std::string& sep) {
  const auto at = in.find(sep);
  if (at == std::string::npos) return {in, ""};
  return {in.substr(0, at), in.substr(at + sep.size())};
}

/// One libFuzzer dictionary line: `token` quoted, with '"', '\\' and non-printable bytes escaped.
inline std::string dictionary_entry(const std::string& token) {
  std::string out = "\"";
  for (unsigned char c : token) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c >= 0x7F) {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"\n";
}

/// Writes the seeds (file name -> bytes) into dir/<target>/ and the dictionary into
/// dir/<target>.dict.
inline void write_seeds(const fs::path& dir, const std::string& target,
                        const std::vector<std::pair<std::string, std::string>>& seeds,
                        const std::vector<std::string>& dictionary) {
  fs::create_directories(dir / target);
  for (const auto& [name, content] : seeds) std::ofstream(dir / target / name, std::ios::binary) << content;
  std::ofstream dict(dir / (target + ".dict"), std::ios::binary);
  for (const auto& t : dictionary) dict << dictionary_entry(t);
}

/// $LORA_FUZZ_SEEDS: when set, the harness writes its seeds and dictionary there and exits.
inline const char* seeds_dir() {
  const char* d = std::getenv("LORA_FUZZ_SEEDS");
  return d && *d ? d : nullptr;
}

/// `rel` under $LORA_SHARED_DIR when that variable is set and the file exists, else "".
inline std::string shared_file(const std::string& rel) {
  const char* s = std::getenv("LORA_SHARED_DIR");
  if (!s || !*s) return "";
  const auto p = fs::path(s) / rel;
  return fs::exists(p) ? p.string() : "";
}

inline std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace fuzz

// The library's file helpers, for programs that write next to its files: an atomic text write
// (a temporary file, fsync, rename, as safetensors::save and peft::save write theirs) and a
// JSON read whose errors name the file. Both throw lora::FileError.
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

#include "detail/file_io.hpp"
#include "error.hpp"

namespace lora {

/// Writes `text` to `path` atomically: "<path>.tmp.<pid>", fsync, rename over `path`, fsync of
/// the folder. `what` names the file in errors (e.g. "config.json").
inline void write_text_atomic(const std::string& path, const std::string& text, const char* what = "file") {
  detail::write_file_atomic(path, what, [&](int fd) { return detail::write_all(fd, text.data(), text.size()); });
}

/// Reads the JSON file at `path` (as nlohmann::ordered_json by default: key order kept; or as
/// `Json`, e.g. nlohmann::json). FileError names `what` (e.g. "PEFT adapter config") and `path`
/// when the file cannot be opened (with `hint` appended) or parsed.
template <typename Json = nlohmann::ordered_json>
Json read_json(const std::string& path, const char* what = "JSON file", const std::string& hint = "") {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError(detail::str("cannot open ", what, " '", path, "'.", hint.empty() ? "" : " ", hint));
  try {
    return Json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw FileError(detail::str(what, " '", path, "' is not valid JSON (", e.what(), ")."));
  }
}

}  // namespace lora

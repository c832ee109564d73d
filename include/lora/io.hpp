// The library's file helpers, for programs that write next to its files: an atomic text write
// (a temporary file, fsync, rename, as safetensors::save and peft::save write theirs) and a
// JSON read whose errors name the file. Both throw lora::FileError.
#pragma once

#include "detail/file_io.hpp"

namespace lora {

/// Writes `text` to `path` atomically: "<path>.tmp.<pid>", fsync, rename over `path`, fsync of
/// the folder. `what` names the file in errors (e.g. "config.json").
using detail::write_text_atomic;
/// Reads the JSON file at `path`, key order kept; `what` names it in errors, `hint` is appended
/// when it cannot be opened.
using detail::read_json;

}  // namespace lora

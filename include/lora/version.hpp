// lora: LoRA for LibTorch. The version, parsed by CMakeLists.txt as the single source of truth.
#pragma once

#define LORA_VERSION_MAJOR 0
#define LORA_VERSION_MINOR 1
#define LORA_VERSION_PATCH 0

namespace lora {
/// "MAJOR.MINOR.PATCH" of the headers in use.
inline const char* version() { return "0.1.0"; }
}  // namespace lora

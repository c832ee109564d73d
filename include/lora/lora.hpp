// lora: LoRA for LibTorch. The umbrella header: includes the library, nothing else.
#pragma once

#include "adapter.hpp"
#include "adapters.hpp"
#include "config.hpp"
#include "error.hpp"
#include "init.hpp"
#include "inject.hpp"
#include "linear.hpp"
#include "loraplus.hpp"
#include "parametrize.hpp"
#include "peft.hpp"
#include "safetensors.hpp"
#include "scaling.hpp"
#include "version.hpp"

// Deprecated (renamed in 0.2): include lora/model_adapter.hpp, whose ModelAdapter was
// lora::Adapters. Kept for one release.
#pragma once

#include "model_adapter.hpp"

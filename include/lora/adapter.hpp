// Deprecated (renamed in 0.2): include lora/layer_adapter.hpp, whose LayerAdapter and
// LayerAdapterSpec were lora::Adapter and lora::AdapterSpec. Kept for one release.
#pragma once

#include "layer_adapter.hpp"

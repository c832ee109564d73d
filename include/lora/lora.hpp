// lora: LoRA for LibTorch. The umbrella header: includes the library, nothing else. Each line
// names one concept's header; detail/ holds what users never name.
#pragma once

#include "combine.hpp"            // add_weighted_adapter: a new adapter from weighted existing ones
#include "config.hpp"             // Config: what inject() adapts and how
#include "conv.hpp"               // lora::Conv1d, Conv2d, Conv3d: drop-ins for torch::nn::Conv1d/2d/3d
#include "embedding.hpp"          // lora::Embedding, a drop-in for torch::nn::Embedding
#include "error.hpp"              // Error and its subclasses
#include "functional.hpp"         // add_lora, lora_linear, add_dora: the formulas on tensors
#include "init.hpp"               // init policies, init::by_name
#include "inject.hpp"             // inject(model, config)
#include "io.hpp"                 // write_text_atomic, read_json
#include "layer_adapter.hpp"      // LayerAdapter, LayerAdapterSpec: one adapter on one layer
#include "linear.hpp"             // lora::Linear, a drop-in for torch::nn::Linear
#include "loraplus.hpp"           // LoRA+ optimizer groups
#include "model.hpp"              // unique_parameters, set_active_adapters, merged_state_dict
#include "model_adapter.hpp"      // ModelAdapter: one adapter on every layer it adapts (inject()'s handle)
#include "peft.hpp"               // PEFT adapter folders both ways, and hot_swap into an existing adapter
#include "routing.hpp"            // RowRouting: each row of a batch through its own adapter
#include "safetensors.hpp"        // .safetensors files
#include "safetensors_types.hpp"  // safetensors::TensorInfo, dtype names
#include "scaling.hpp"            // scaling policies, scaling::by_name
#include "version.hpp"

// lora::peft: adapters in Hugging Face PEFT's on-disk layout, both ways.
//
// A PEFT LoRA adapter is a folder with
//   adapter_model.safetensors  "base_model.model.<HF module path>.lora_A.weight" (r, in),
//                              "....lora_B.weight" (out, r), "....lora_magnitude_vector" (out)
//                              for DoRA, and the modules_to_save under their plain keys
//                              "base_model.model.<HF module path>.<param>"; metadata {"format": "pt"}
//   adapter_config.json        peft_type "LORA", r, lora_alpha, target_modules, ... (sorted keys)
//
// The library does not know the Hugging Face model: an HfMapping says how this model's module
// paths read in HF (identity by default) and which layers are transformers' Conv1D there (GPT-2's
// c_attn, c_proj, c_fc), for which PEFT sets fan_in_fan_out. PEFT keeps A (r, in) and B (out, r)
// for Conv1D layers as for nn.Linear (only the delta it adds to the (in, out) weight is
// transposed), so the tensors are written and read the same for both.
//
// peft_config.hpp: adapter_config.json and HfMapping; peft_save.hpp: save(); peft_load.hpp: load();
// peft_hot_swap.hpp: hot_swap(), a folder loaded into an existing adapter in place.
#pragma once

#include "peft_config.hpp"
#include "peft_hot_swap.hpp"
#include "peft_load.hpp"
#include "peft_save.hpp"

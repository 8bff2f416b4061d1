// Hugging Face Llama / Qwen2 interchange: parameter names, config.json fields and shape checks
// between a transformers checkpoint directory and our Decoder. Both use the same math (RMSNorm,
// rotate-halves RoPE, grouped-query attention, SwiGLU, nn.Linear [out, in] weights), so weights
// map one to one by name; Qwen2's q/k/v biases map to ours (model.attention_bias).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "configs/config.h"
#include "trainer/hf/safetensors.h"

namespace sparsering::trainer {

// "block3.attention.q_proj.weight" -> "model.layers.3.self_attn.q_proj.weight", and so on.
// Throws std::invalid_argument for a name that is not one of our parameters.
std::string hf_name(const std::string& ours);

// The inverse of hf_name; nullopt for a name with no counterpart here.
std::optional<std::string> our_name(const std::string& hf);

// Reads <dir>/config.json and checks each architecture field against `model`. Throws UserError
// naming every mismatched field with both values, followed by the `--set` overrides that make
// our config match, or naming a feature we lack (sliding windows, other activations or RoPE
// types, Llama's o_proj bias). `lm_head_stored`: whether the weights hold lm_head.weight (absent
// means tied embeddings). With model.rope_override the RoPE fields may differ: returns those that
// do as text ("" when none).
std::string check_hf_config(const std::string& dir, const config::ModelConfig& model,
                            bool lm_head_stored);

// For each of our parameters (`names`, with tensors `ours` giving the expected shapes) the HF
// tensor that fills it. Throws UserError naming the tensor and both shapes on a mismatch, a
// missing tensor, or a tensor the model has no place for (e.g. biases without attention_bias).
std::vector<SafetensorsEntry> match_hf_entries(const std::vector<SafetensorsEntry>& hf,
                                               const std::vector<std::string>& names,
                                               const std::vector<at::Tensor>& ours,
                                               const std::string& source);

// config.json for `experiment`'s model as transformers' Qwen2Config (attention_bias) or
// LlamaConfig, with its resolved RoPE, weights in `dtype`.
std::string hf_config_json(const config::Experiment& experiment, at::ScalarType dtype);

}  // namespace sparsering::trainer

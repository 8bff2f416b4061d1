// Rotary position embedding tables for the model.rope_type variants, computed exactly as
// transformers' ROPE_INIT_FUNCTIONS and LlamaRotaryEmbedding / Qwen2RotaryEmbedding compute them:
// the same fp32 tensor operations in the same order, so imported Llama 3.x and Qwen2.5
// checkpoints see the rotations (and YaRN's attention factor) they were trained with.
#pragma once

#include <ATen/ATen.h>

#include <utility>

#include "configs/config.h"

namespace sparsering::trainer {

struct RopeFrequencies {
  at::Tensor inverse_frequency;  // fp32 [head_dim / 2]
  double attention_factor = 1;   // multiplies cos and sin (YaRN), else 1
};

// The pretraining context LLAMA3 and YARN scale from: model.rope_original_max_context, or
// model.max_context when that is 0 (transformers' fallback to max_position_embeddings).
int64_t rope_original_context(const config::ModelConfig& model);

// YaRN's attention factor: model.rope_attention_factor, or 0.1 ln(factor) + 1 when that is 0.
double yarn_attention_factor(const config::ModelConfig& model);

RopeFrequencies rope_frequencies(const config::ModelConfig& model);

// cos and sin (fp32 [tokens, head_dim / 2], times the attention factor) of the angles
// position x inverse frequency, for int64 `positions`.
std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions,
                                              const config::ModelConfig& model);

}  // namespace sparsering::trainer

// Whole-shard attention through cuDNN's fused attention (LibTorch's SDPA cuDNN backend), for the
// (query shard, key/value shard) pairs of a dense ring whose mask is plain: causal over local
// tokens (a shard against itself, positions ascending) or everything visible (a shard wholly
// after the keys). cuDNN runs dense causal attention at about twice our kernel's rate on Hopper
// (bench/RESULTS.md), so the dense ring and the dense warm-up steps use it there; partial
// results merge by log-sum-exp exactly like the block-sparse kernel's. GPU tensors only.
#pragma once

#include <ATen/ATen.h>

#include "kernels/sparse_attention.h"

namespace sparsering::kernels {

enum class PlainMask { kCausal, kFull };

// q [batch, q_tokens, heads, dim]; k, v [batch, k_tokens, kv_heads, dim], bf16 or fp16, CUDA.
// Returns the shard's output and fp32 natural-log LSE [batch, heads, q_tokens].
AttentionPartial cudnn_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, PlainMask mask, double softmax_scale);

// Adds this shard's contribution to the fp32 accumulators dq, dk, dv. out and lse are the final
// merged forward results (so per-shard gradients add up, as in sparse_attention_backward).
void cudnn_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                              PlainMask mask, double softmax_scale, at::Tensor& dq, at::Tensor& dk,
                              at::Tensor& dv);

}  // namespace sparsering::kernels

// CPU reference twins of the block-sparse attention kernels: the same semantics as
// kernels/sparse_attention_params.h, computed densely with an explicit mask in fp32 (fp64 when the
// inputs are fp64). Used by CI, by the CPU training path and as the reference of the GPU tests.
#pragma once

#include "kernels/sparse_attention.h"

namespace sparsering::kernels::cpu {

// The explicit [batch, heads, q_tokens, k_tokens] mask of keys each query attends: index, causal
// rule and, when blocks.q_key_starts is defined, the document rule.
at::Tensor attention_mask(const ShardBlocks& blocks, const SparseIndex& index, int64_t batch,
                          int64_t heads, int64_t q_tokens, int64_t k_tokens);

AttentionPartial sparse_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const ShardBlocks& blocks,
                                              const SparseIndex& index, double softmax_scale);

void sparse_attention_backward_cpu(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& v, const at::Tensor& lse,
                                   const at::Tensor& delta, const ShardBlocks& blocks,
                                   const SparseIndex& index, double softmax_scale, at::Tensor& dq,
                                   at::Tensor& dk, at::Tensor& dv);

void lse_merge_cpu(at::Tensor& out_acc, at::Tensor& lse_acc, const at::Tensor& out_part,
                   const at::Tensor& lse_part);

}  // namespace sparsering::kernels::cpu

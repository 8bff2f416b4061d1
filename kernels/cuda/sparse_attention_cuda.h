// Host entry points of the CUDA block-sparse attention kernels. Framework-free: the torch op layer
// (kernels/sparse_attention.h) fills the parameter structs from tensors and calls these. Every
// function validates its arguments, returns cudaErrorInvalidValue on bad input (nothing is
// launched then) and otherwise the launch status (cudaGetLastError()); all work is asynchronous
// on `stream`.
#pragma once

#include <cuda_runtime.h>

#include "../sparse_attention_params.h"

namespace sparsering::kernels {

// Checks what every kernel of this family relies on: head_dim in {64, 128}, block_size in
// {64, 128}, token counts that are multiples of block_size, num_kv_heads dividing num_heads, grid
// limits (num_heads and batch at most 65535), non-null q/k/v/index pointers (k, v and k_block_ids
// only when k_tokens > 0; block_cols and column_indices may be null when they are empty),
// 16-byte aligned q/k/v (and q_key_start when set) and a finite softmax_scale. Index contents
// (ranges, ids, key starts) are trusted, not checked. Returns cudaSuccess or
// cudaErrorInvalidValue.
cudaError_t validate_sparse_attention_params(const SparseAttentionParams& p);

// Forward of one (query shard, kv shard) call: writes p.out (element type) and p.lse
// ([batch, num_heads, q_tokens], fp32, natural log). Rows that attend no key (document masking
// included) get out = 0 and lse = -inf. Also requires out (16-byte aligned) and lse to be
// non-null. Forward and backward run a document-masking instantiation when p.q_key_start is set
// and the unmasked one otherwise.
cudaError_t launch_sparse_attention_forward(const SparseAttentionParams& p, cudaStream_t stream);

// delta[b, h, t] = sum_d dout[b, t, h, d] * out[b, t, h, d] in fp32, the row term of the softmax
// backward (FlashAttention-2, Alg. 2, line 4). dout/out: [batch, tokens, heads, head_dim] of
// `type`, 16-byte aligned; delta: [batch, heads, tokens]. head_dim in {64, 128}.
cudaError_t launch_attention_backward_delta(float* delta, const void* dout, const void* out,
                                            ElementType type, int batch, int tokens, int heads,
                                            int head_dim, cudaStream_t stream);

// Backward of one call: adds this shard's gradients into p.dq, p.dk and p.dv (fp32, which the
// caller zeroes once). p.forward.lse must be the final (merged) lse and p.delta the output of
// attention_backward_delta on the final output. With p.deterministic the transposed index must be
// set and dq, dk and dv are produced without atomics (bitwise reproducible). Otherwise, when the
// transposed block index is set (and lse/delta/dq are 16-byte aligned), the fast schedule runs
// FlashAttention-2's way: one CTA per kv block keeps dK/dV in registers and adds dQ with fp32
// atomics; without it, a query-block-outer schedule adds dK/dV with atomics. The vertical columns
// always add dK/dV with atomics outside deterministic mode. Requires dq/dk/dv 8-byte aligned.
cudaError_t launch_sparse_attention_backward(const SparseAttentionBackwardParams& p,
                                             cudaStream_t stream);

// Merges one partial attention result into an fp32 accumulator by log-sum-exp:
//   lse = max + log(exp(lse_acc - max) + exp(lse_part - max)),
//   out_acc = exp(lse_acc - lse) * out_acc + exp(lse_part - lse) * out_part.
// A side whose lse is -inf contributes nothing; when both are -inf the row stays (lse -inf,
// out_acc unchanged). out_acc: fp32 [batch, tokens, heads, head_dim]; out_part: `type`, same
// shape; lse_acc/lse_part: [batch, heads, tokens]. head_dim in {64, 128}; out_acc and out_part
// 16-byte aligned.
cudaError_t launch_lse_merge(float* out_acc, float* lse_acc, const void* out_part,
                             const float* lse_part, ElementType type, int batch, int tokens,
                             int heads, int head_dim, cudaStream_t stream);

}  // namespace sparsering::kernels

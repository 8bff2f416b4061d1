// Torch-facing block-sparse attention ops for one (query shard, key/value shard) pair. Each op
// dispatches on device: the CUDA kernels in kernels/cuda/ on GPU, the CPU reference twin in
// kernels/cpu/ otherwise; both implement kernels/sparse_attention_params.h's semantics.
#pragma once

#include <ATen/ATen.h>

namespace sparsering::kernels {

// Active keys of every (batch, head, local query block) row, against one key/value shard.
struct SparseIndex {
  int block_size = 0;
  at::Tensor block_row_offsets;   // int32 [batch * heads * q_blocks + 1]
  at::Tensor block_cols;          // int32 local kv block ids
  at::Tensor column_row_offsets;  // int32 [batch * heads * q_blocks + 1]
  at::Tensor column_indices;      // int32 local key token ids outside the row's active blocks
  // Transposed index of the GPU backward (see SparseAttentionBackwardParams); build_sparse_index
  // fills the block part, or with the columns every part, on request.
  at::Tensor t_block_row_offsets, t_block_entries, t_column_row_offsets, t_column_entries;
  // int32 [batch * kv_heads, capacity]: the column keys of each (sequence, kv head), ascending,
  // -1 padded; capacity a multiple of kColumnKeyChunk (the deterministic column pass's chunks).
  at::Tensor t_column_keys;

  int64_t num_blocks() const { return block_cols.numel(); }
  int64_t num_columns() const { return column_indices.numel(); }
  bool empty() const { return num_blocks() == 0 && num_columns() == 0; }
};

// Where a shard's blocks sit in the global sequence: global block id of each local block, and
// with document masking the first key position each local query may attend.
struct ShardBlocks {
  at::Tensor q_block_ids;  // int32 [q_tokens / block_size]
  at::Tensor k_block_ids;  // int32 [k_tokens / block_size]
  // Optional int32 [batch, q_tokens]: global position of the first token of each query's
  // document (sparse_attention_params.h, q_key_start). Undefined = no document masking.
  at::Tensor q_key_starts;
};

struct AttentionPartial {
  at::Tensor out;  // [batch, q_tokens, heads, head_dim], q's dtype
  at::Tensor lse;  // [batch, heads, q_tokens] fp32; -inf where a query attended nothing
};

// q [batch, q_tokens, heads, dim]; k, v [batch, k_tokens, kv_heads, dim].
AttentionPartial sparse_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const ShardBlocks& blocks,
                                          const SparseIndex& index, double softmax_scale);

// Adds this shard's contribution to dq (local queries) and dk, dv (this kv shard), all fp32.
// out and lse are the final merged forward results; delta = attention_delta(dout, out).
void sparse_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                               const at::Tensor& delta, const ShardBlocks& blocks,
                               const SparseIndex& index, double softmax_scale, bool deterministic,
                               at::Tensor& dq, at::Tensor& dk, at::Tensor& dv);

// rowsum(dout * out) in fp32, [batch, heads, q_tokens].
at::Tensor attention_delta(const at::Tensor& dout, const at::Tensor& out);

// Merges a partial result into an fp32 accumulator in place, by log-sum-exp:
// lse = log(exp(lse_acc) + exp(lse_part)), out = sum of outputs weighted by exp(lse_i - lse).
void lse_merge(at::Tensor& out_acc, at::Tensor& lse_acc, const at::Tensor& out_part,
               const at::Tensor& lse_part);

}  // namespace sparsering::kernels

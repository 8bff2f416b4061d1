// Host entry points of the index-building kernels (kernels/sparse_index.h): the CSR rows of one
// (query shard, kv shard) pair's block-sparse index, and its transposed blocks, straight from a
// vertical-slash pattern. Framework-free like sparse_attention_cuda.h: raw pointers and a stream;
// the launchers validate their arguments, return cudaErrorInvalidValue on bad input (nothing is
// launched then) and otherwise the launch status; all work is asynchronous on `stream`.
//
// Building an index takes two passes over the same rows: the count pass writes how many entries
// every row has, the caller turns the counts into row offsets (a prefix sum) and allocates the
// entries, and the fill pass writes them, each row in ascending order.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sparsering::kernels {

// The pattern resolved onto the pair, as kernels/sparse_index.h's SparseIndexInputs describes it.
// Rows: (sequence, head, query block) for the blocks and the columns, (sequence, kv head, kv block)
// for the transposed blocks; every row of a sequence is built even where no document mask makes
// the sequences differ.
struct SparseIndexParams {
  const int32_t* q_block_ids = nullptr;    // [q_blocks] global block ids of the query shard
  const int32_t* k_block_ids = nullptr;    // [k_blocks] global block ids of the kv shard
  const bool* block_diagonals = nullptr;   // [heads, global_blocks]: chosen block offsets
  const bool* column_blocks = nullptr;     // [heads, global_blocks]: blocks made of columns
  const int32_t* columns = nullptr;        // [heads, num_columns] global positions, -1 padded
  const int32_t* column_slots = nullptr;   // [heads, num_columns] local kv block, -1 elsewhere
  const int32_t* column_tokens = nullptr;  // [heads, num_columns] local key token
  const int32_t* first_keys = nullptr;     // [batch, q_blocks] or null (no document masks)
  int batch = 0;
  int heads = 0;
  int kv_heads = 0;  // divides heads
  int block_size = 0;
  int q_blocks = 0;
  int k_blocks = 0;
  int global_blocks = 0;  // every id above is below it
  int num_columns = 0;
  bool transposed_blocks = false;  // also build the (sequence, kv head, kv block) rows

  // Count pass: entries per row, int32 [batch * heads * q_blocks] each, and
  // [batch * kv_heads * k_blocks] for the transposed blocks (when asked).
  int32_t* block_counts = nullptr;
  int32_t* column_counts = nullptr;
  int32_t* t_block_counts = nullptr;

  // Fill pass: the row offsets from the counts (one more element than rows) and the entries.
  const int32_t* block_row_offsets = nullptr;
  const int32_t* column_row_offsets = nullptr;
  const int32_t* t_block_row_offsets = nullptr;
  int32_t* block_cols = nullptr;       // local kv block ids
  int32_t* column_indices = nullptr;   // local key tokens
  int32_t* t_block_entries = nullptr;  // head * q_blocks + query block
};

cudaError_t launch_sparse_index_counts(const SparseIndexParams& p, cudaStream_t stream);
cudaError_t launch_sparse_index_fill(const SparseIndexParams& p, cudaStream_t stream);

}  // namespace sparsering::kernels

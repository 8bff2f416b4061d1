// Framework-free description of one block-sparse attention call (one query shard against one
// key/value shard). The CUDA kernels take only this struct and a stream; the torch-facing op layer
// (kernels/sparse_attention.h) fills it from tensors. The CPU reference twin implements exactly
// the same semantics on ATen tensors.
//
// Semantics. Tensors are [batch, tokens, heads, head_dim], contiguous, bf16 or fp16. Local query
// block i holds global tokens q_block_ids[i] * block_size + [0, block_size); the same for keys. A
// query attends a key only when key_position <= query_position (causal), and only when the key
// lies either in an active block of its CSR row or in its row's column list:
//   row r = (b * num_heads + h) * num_q_blocks + qb
//   active kv blocks:  block_cols[block_row_offsets[r] .. block_row_offsets[r + 1])   (local ids)
//   vertical columns:  column_indices[column_row_offsets[r] .. column_row_offsets[r + 1])
//                      (local key token indices, never inside an active block of the same row)
// With document masking (q_key_start set) a query also attends only keys at or after the first
// key of its document: q_key_start[b * q_tokens + i] <= key_position, for local query token i of
// batch b. Documents are contiguous ranges of the sequence, so this one lower bound per query
// (with the causal upper bound) is exactly "same document"; keys need nothing extra because their
// positions follow from k_block_ids.
// A query that attends nothing gets out = 0 and lse = -inf, so LSE merging ignores it.
#pragma once

#include <cstdint>

namespace sparsering::kernels {

enum class ElementType { kBFloat16, kFloat16 };

struct SparseAttentionParams {
  const void* q = nullptr;  // [batch, q_tokens, num_heads, head_dim]
  const void* k = nullptr;  // [batch, k_tokens, num_kv_heads, head_dim]
  const void* v = nullptr;  // [batch, k_tokens, num_kv_heads, head_dim]
  void* out = nullptr;      // [batch, q_tokens, num_heads, head_dim], same type as q
  float* lse = nullptr;     // [batch, num_heads, q_tokens], natural log

  ElementType element_type = ElementType::kBFloat16;
  int batch = 0;
  int q_tokens = 0;  // multiple of block_size
  int k_tokens = 0;  // multiple of block_size
  int num_heads = 0;
  int num_kv_heads = 0;  // divides num_heads (GQA)
  int head_dim = 0;      // 64 or 128
  int block_size = 0;    // 64 or 128
  float softmax_scale = 0.f;

  const int32_t* q_block_ids = nullptr;         // [q_tokens / block_size] global block ids
  const int32_t* k_block_ids = nullptr;         // [k_tokens / block_size] global block ids
  const int32_t* block_row_offsets = nullptr;   // [batch * num_heads * num_q_blocks + 1]
  const int32_t* block_cols = nullptr;          // [nnz_blocks]
  const int32_t* column_row_offsets = nullptr;  // [batch * num_heads * num_q_blocks + 1]
  const int32_t* column_indices = nullptr;      // [nnz_columns]
  // [batch, q_tokens] global position of the first key each query may attend (its document's
  // start); nullptr = no document masking, and the kernels run their unmasked instantiation.
  const int32_t* q_key_start = nullptr;

  int num_q_blocks() const { return q_tokens / block_size; }
  int num_k_blocks() const { return k_tokens / block_size; }
};

// Backward of one call. lse is the final (merged, global) log-sum-exp of the query rows and out the
// final output, so per-shard gradients simply add. dq/dk/dv are fp32 accumulators the kernels add
// into (the caller zeroes them once and may accumulate several shards).
struct SparseAttentionBackwardParams {
  SparseAttentionParams forward;  // q, k, v, index; forward.out is the final output
  const void* dout = nullptr;     // [batch, q_tokens, num_heads, head_dim]
  const float* delta = nullptr;   // [batch, num_heads, q_tokens] rowsum(dout * out), fp32
  float* dq = nullptr;            // [batch, q_tokens, num_heads, head_dim] fp32, accumulated
  float* dk = nullptr;            // [batch, k_tokens, num_kv_heads, head_dim] fp32, accumulated
  float* dv = nullptr;            // [batch, k_tokens, num_kv_heads, head_dim] fp32, accumulated
  // Deterministic mode: dK/dV are computed per kv block from the transposed index (kv block ->
  // query blocks) without atomics. Rows of the transposed CSR are
  //   (b * num_kv_heads + kvh) * num_k_blocks + kb, entries encode q_head * num_q_blocks + qb.
  bool deterministic = false;
  const int32_t* t_block_row_offsets = nullptr;
  const int32_t* t_block_entries = nullptr;
  const int32_t* t_column_row_offsets = nullptr;  // rows as above, over local key tokens:
  const int32_t* t_column_entries = nullptr;      // (b * num_kv_heads + kvh) * k_tokens + token
  // [batch * num_kv_heads, t_column_key_capacity]: per (sequence, kv head), the local key tokens
  // whose transposed column row is non-empty, ascending, padded with -1. The deterministic dK/dV
  // pass over the columns runs one CTA per kColumnKeyChunk of them. The capacity is a multiple of
  // kColumnKeyChunk (0 when the pair has no columns).
  const int32_t* t_column_keys = nullptr;
  int t_column_key_capacity = 0;
};

// Keys per chunk of t_column_keys (the deterministic column pass's kv tile).
inline constexpr int kColumnKeyChunk = 64;

}  // namespace sparsering::kernels

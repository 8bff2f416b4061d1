// Host entry points of the pattern-estimation kernels (kernels/vertical_slash.h): softmax row
// statistics of the sampled logits and the attention mass per key column and per diagonal, read
// straight from the logits so the probabilities never exist in memory. Framework-free like
// sparse_attention_cuda.h: raw pointers and a stream; every function validates its arguments,
// returns cudaErrorInvalidValue on bad input (nothing is launched then) and otherwise the launch
// status; all work is asynchronous on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sparsering::kernels {

// Online softmax statistics (Milakov & Gimelshein 2018) of every row of `logits`, fp32
// [rows, k_tokens] contiguous: row_max[r] = max_j l[r, j] and row_sum[r] = sum_j exp(l[r, j] -
// row_max[r]), both fp32 [rows]. Entries may be -inf; a row without a finite entry gets
// row_max = -inf and row_sum = 0 (never NaN). Each row is read once.
cudaError_t launch_softmax_row_stats(float* row_max, float* row_sum, const float* logits,
                                     int64_t rows, int64_t k_tokens, cudaStream_t stream);

// One attention-mass call: the logits of `queries` sampled queries against this shard's keys and
// the softmax statistics of their rows over the whole sequence (all shards).
struct AttentionMassParams {
  const float* logits = nullptr;         // [batch, heads, queries, k_tokens] fp32, contiguous
  const float* row_max = nullptr;        // [batch, heads, queries]
  const float* row_sum = nullptr;        // [batch, heads, queries]
  const int64_t* q_positions = nullptr;  // [queries] global positions of the sampled queries
  // [k_tokens] global positions of this shard's keys, unique, in any order (a layout's shard).
  const int64_t* k_positions = nullptr;
  int batch = 0;
  int heads = 0;  // at most 65535 (grid limit)
  int queries = 0;
  int64_t k_tokens = 0;         // at most sequence_length
  int64_t sequence_length = 0;  // at most INT_MAX

  float* vertical = nullptr;  // [heads, sequence_length] fp32, written whole
  float* slash = nullptr;     // [heads, sequence_length] fp32, written whole
  // Workspace int32 [sequence_length]: local key index of every global position, -1 where the
  // position is not in this shard.
  int32_t* key_slot_of_position = nullptr;
};

// With p = exp(l - row_max) / row_sum (0 where l = -inf or row_sum = 0):
//   vertical[h, k_positions[j]] = sum over (b, i) of p[b, h, i, j]   (0 at positions not here),
//   slash[h, d] = sum over (b, i, j) with q_positions[i] - k_positions[j] = d of p[b, h, i, j].
// Keys after their query must have l = -inf (sample_logits masks them): their probability is
// zero, so they belong to no diagonal. Positions are trusted to lie in [0, sequence_length);
// ones outside are skipped rather than written out of bounds.
cudaError_t launch_attention_mass_from_logits(const AttentionMassParams& p, cudaStream_t stream);

}  // namespace sparsering::kernels

// Vertical-slash attention patterns (docs/algorithms.md, 1): estimation from a sample of queries
// and selection of the top columns and diagonals per head; kernels/sparse_index.h turns a pattern
// into the block-sparse index of any (query shard, key/value shard) pair under any token layout.
// Written on ATen ops (with fused CUDA kernels for the softmax statistics and the attention
// mass), so the same code runs on CPU and GPU; the parts that need every rank's keys take and
// return plain tensors that the ring layer (parallel/) combines with collectives.
#pragma once

#include <ATen/ATen.h>

#include "kernels/sparse_attention.h"
#include "kernels/sparse_index.h"

namespace sparsering::kernels {

struct VerticalSlashPattern {
  int block_size = 0;
  int64_t sequence_length = 0;
  // Selected key columns per head (global token positions, ascending), padded with -1.
  at::Tensor columns;  // int64 [heads, max_columns]
  // Slash part at block granularity: block_diagonals[h, d] says whether block pairs whose
  // global query block minus key block equals d are active (a selected diagonal crosses them).
  at::Tensor block_diagonals;  // bool [heads, sequence_length / block_size]
};

// Every causal block, no columns: dense causal attention through the same sparse machinery.
VerticalSlashPattern dense_pattern(int64_t heads, int64_t sequence_length, int block_size,
                                   const at::Device& device);

// Logits of the sampled queries against this shard's keys, scaled, -inf where a key lies after
// the query. q_sample [batch, n, heads, dim], k [batch, k_tokens, kv_heads, dim], positions int64.
// Returns fp32 [batch, heads, n, k_tokens].
at::Tensor sample_logits(const at::Tensor& q_sample, const at::Tensor& q_positions,
                         const at::Tensor& k, const at::Tensor& k_positions, double softmax_scale);

// Attention mass per key column and per diagonal (query position minus key position), summed
// over the batch and the sampled queries, scattered to global positions: [heads, seq] each.
// `probabilities` must already be normalised over the whole sequence (all shards).
struct AttentionMass {
  at::Tensor vertical;  // fp32 [heads, sequence_length]
  at::Tensor slash;     // fp32 [heads, sequence_length]
};
AttentionMass attention_mass(const at::Tensor& probabilities, const at::Tensor& q_positions,
                             const at::Tensor& k_positions, int64_t sequence_length);

// Softmax statistics of every row of logits [batch, heads, n, k_tokens] (fp32, contiguous; -inf
// entries allowed), read once. A row without a finite entry (a shard whose keys all follow the
// sampled queries) has max = -inf and sum = 0.
struct SoftmaxRowStats {
  at::Tensor max;  // fp32 [batch, heads, n]
  at::Tensor sum;  // fp32 [batch, heads, n]: sum of exp(logit - max) over the row
};
SoftmaxRowStats softmax_row_stats(const at::Tensor& logits);

// The row sums of `stats` taken relative to `max` instead (a max over more shards, at least
// stats.max): sum * exp(stats.max - max), 0 where stats.max is -inf. Summed over the shards, this
// gives the row sum of the whole sequence (online softmax, Milakov & Gimelshein 2018, eq. 4).
at::Tensor rescale_row_sum(const SoftmaxRowStats& stats, const at::Tensor& max);

// attention_mass(softmax(logits), ...) without the probabilities in memory: p = exp(logit -
// row_max) / row_sum, 0 where the logit is -inf or row_sum is 0, with row_max and row_sum
// (fp32 [batch, heads, n]) the statistics of the whole sequence's rows. Keys after their query
// must have logit -inf (as sample_logits gives). q_positions: int64 [n]; k_positions: int64
// [k_tokens], this shard's global positions, unique, in any order.
AttentionMass attention_mass_from_logits(const at::Tensor& logits, const at::Tensor& row_max,
                                         const at::Tensor& row_sum, const at::Tensor& q_positions,
                                         const at::Tensor& k_positions, int64_t sequence_length);

// The sampled queries and the keys of one estimation, for the two fused steps below, which give
// what softmax_row_stats and attention_mass_from_logits give on sample_logits' output without the
// logits in memory (fp32 [batch, heads, n, k_tokens]: 1 GiB for 64 queries against 128K keys at
// 32 heads). On GPUs (kernels/cuda/sampled_attention_mass.cu) they recompute the logits tile by
// tile on tensor cores; on CPUs they are that composition (the kernels' twin).
struct SampledQueries {
  at::Tensor q_sample;         // [batch, n, heads, dim]: the queries at positions first_position +
  int64_t first_position = 0;  // 0 .. n - 1
  at::Tensor k;                // [batch, k_tokens, kv_heads, dim]
  at::Tensor k_positions;      // int64 [k_tokens] on k's device: this shard's global positions
  int64_t k_position_end = 0;  // 1 + the largest of them
  double softmax_scale = 0;
};

// Checks the shapes and moves `k_positions` (int64 [k_tokens > 0] on the CPU, unique, >= 0) to
// k's device.
// On a GPU the kernels also need: bf16 or fp16, head dim 64 or 128, n <= 128, and the keys in
// runs of 64 consecutive positions starting at multiples of 64 (every TokenLayout shard with 64-
// or 128-token blocks); other inputs get an error naming the requirement.
SampledQueries make_sampled_queries(const at::Tensor& q_sample, int64_t first_position,
                                    const at::Tensor& k, const at::Tensor& k_positions,
                                    double softmax_scale);

// softmax_row_stats of the sampled logits of this shard: fp32 [batch, heads, n] each.
SoftmaxRowStats sampled_row_stats(const SampledQueries& sampled);

// attention_mass_from_logits of the sampled logits of this shard, with row_max / row_sum the
// statistics of the whole sequence's rows. On a GPU every sum runs in a fixed order (no atomics).
AttentionMass sampled_attention_mass(const SampledQueries& sampled, const at::Tensor& row_max,
                                     const at::Tensor& row_sum, int64_t sequence_length);

// Top `num_columns` columns and `num_diagonals` diagonals per head (by mass; equal masses go to
// the lower position), plus the always-kept sink columns [0, sink_tokens) and local diagonals
// [0, local_tokens); counts are clamped to [0, length]. The columns' rows are
// min(length, num_columns + sink_tokens) wide whatever the mass (no host sync on a GPU), padded
// with -1. On a GPU one kernel (kernels/cuda/pattern_select.cu) picks what the CPU twin picks.
// Masses order by their float value (-0 just below +0; a NaN above +inf if its sign bit is clear,
// below -inf if set), the same on both.
VerticalSlashPattern select_pattern(const AttentionMass& mass, int64_t num_columns,
                                    int64_t num_diagonals, int64_t sink_tokens,
                                    int64_t local_tokens, int block_size);

}  // namespace sparsering::kernels

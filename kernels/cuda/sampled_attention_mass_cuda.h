// Host entry points of the fused pattern estimation (kernels/vertical_slash.h, sampled_row_stats
// and sampled_attention_mass): the softmax row statistics and the attention mass of the sampled
// queries computed from Q and K tiles on tensor cores, so that the sampled logits (fp32 [batch,
// heads, queries, k_tokens]: 1 GiB for 64 queries against 128K keys at 32 heads) never exist in
// memory. Framework-free like attention_mass_cuda.h: raw pointers and a stream; every function
// validates its arguments, returns cudaErrorInvalidValue on bad input (nothing is launched then)
// and otherwise the launch status; all work is asynchronous on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "sparse_attention_cuda.h"

namespace sparsering::kernels {

// The sampled queries are the consecutive global positions [first_query_position,
// first_query_position + queries). Keys come in tiles of 64: local keys 64 t .. 64 t + 63 hold the
// consecutive positions k_positions[64 t] + 0 .. 63, and k_positions[64 t] is a multiple of 64
// (every TokenLayout shard with 64- or 128-token blocks; the caller checks it). The logit of
// query i and key j is softmax_scale * q_i . k_j, -inf where the key lies after the query.
struct SampledEstimationParams {
  const void* q_sample = nullptr;  // [batch, queries, heads, head_dim], contiguous
  const void* k = nullptr;         // [batch, k_tokens, kv_heads, head_dim], contiguous
  ElementType element_type = ElementType::kBFloat16;
  int batch = 0;
  int heads = 0;  // at most 65535, a multiple of kv_heads
  int kv_heads = 0;
  int head_dim = 0;      // 64 or 128
  int queries = 0;       // 1 .. 128
  int64_t k_tokens = 0;  // a multiple of 64, at most sequence_length
  int64_t first_query_position = 0;
  int64_t sequence_length = 0;           // at most INT_MAX, a multiple of 64
  const int64_t* k_positions = nullptr;  // [k_tokens], device
  float softmax_scale = 0.f;

  // Row statistics (launch_sampled_row_stats): fp32 [batch, heads, queries] each, and a workspace
  // of 2 x sampled_row_stats_workspace_floats(...) floats for the per-chunk partials.
  float* row_max = nullptr;
  float* row_sum = nullptr;
  float* row_partials = nullptr;

  // Attention mass (launch_sampled_attention_mass): the sequence's row statistics (all shards)
  // in, vertical and slash fp32 [heads, sequence_length] out (written whole), and workspaces of
  // sampled_slash_workspace_floats(...) floats and sequence_length / 64 int32.
  const float* sequence_row_max = nullptr;
  const float* sequence_row_sum = nullptr;
  float* vertical = nullptr;
  float* slash = nullptr;
  float* slash_partials = nullptr;
  int32_t* tile_of_position_tile = nullptr;
};

// Floats of one of the two row-statistics partials (max, sum) and of the slash partials.
int64_t sampled_row_stats_workspace_floats(const SampledEstimationParams& p);
int64_t sampled_slash_workspace_floats(const SampledEstimationParams& p);

// row_max / row_sum as softmax_row_stats of the sampled logits: per row the max logit and the sum
// of exp(logit - max), (-inf, 0) for a row without a finite logit.
cudaError_t launch_sampled_row_stats(const SampledEstimationParams& p, cudaStream_t stream);

// vertical / slash as attention_mass_from_logits of the sampled logits with the sequence's row
// statistics: p = exp(logit - row_max) / row_sum (0 where the logit is -inf or row_sum is 0),
// vertical[h, key position] summed over (batch, query), slash[h, d] over (batch, query, key) with
// query position - key position = d; positions of other shards get vertical 0. Every sum runs in
// a fixed order: equal inputs give bitwise equal masses.
cudaError_t launch_sampled_attention_mass(const SampledEstimationParams& p, cudaStream_t stream);

}  // namespace sparsering::kernels

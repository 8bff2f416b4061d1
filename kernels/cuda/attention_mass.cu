// Pattern estimation from the sampled logits in two reads of them, instead of a materialised
// softmax and index_add_ scatters (docs/algorithms.md, 1.1):
//   1. softmax_row_stats: one CTA per row folds the row into an online (max, sum) pair
//      (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax", Alg. 3).
//   2. attention_mass_from_logits: p = exp(l - max) / sum is recomputed on the fly. Vertical:
//      one thread per (head, local key) sums its column over (batch, query), reading rows
//      coalesced, and writes the key's global position directly (positions are unique: no
//      atomics). Slash: one thread per (head, diagonal d) sums p at key position q - d over
//      (batch, query), through a map global position -> local key; consecutive diagonals read
//      consecutive keys wherever the layout's blocks are contiguous.
// Both mass kernels walk the rows of their head in chunks staged in shared memory with the row's
// softmax coefficients, so each thread's loads depend on nothing but its own index.
#include <climits>
#include <cmath>
#include <cstdint>

#include "attention_mass_cuda.h"
#include "device_constants.cuh"
#include "device_online_softmax.cuh"

namespace sparsering::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Independent 16-byte loads each thread issues before folding them in: without them the row
// statistics loop waits on one load's latency at a time.
constexpr int kLoadsInFlight = 4;

// ================================================================================================
// softmax row statistics
// ================================================================================================

// Folds four logits in with a single rescale of the running sum.
__device__ __forceinline__ MaxSum fold(MaxSum acc, float4 v) {
  const float max = fmaxf(fmaxf(acc.max, fmaxf(v.x, v.y)), fmaxf(v.z, v.w));
  if (max == -INFINITY) return acc;
  return {max, acc.sum * __expf(acc.max - max) + __expf(v.x - max) + __expf(v.y - max) +
                   __expf(v.z - max) + __expf(v.w - max)};
}

__device__ __forceinline__ MaxSum warp_reduce(MaxSum v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    const MaxSum other{__shfl_xor_sync(kFullMask, v.max, offset),
                       __shfl_xor_sync(kFullMask, v.sum, offset)};
    v = merge(v, other);
  }
  return v;
}

// The CTA's (max, sum); valid in thread 0.
__device__ __forceinline__ MaxSum block_reduce(MaxSum v) {
  __shared__ MaxSum per_warp[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  v = warp_reduce(v);
  if (lane == 0) per_warp[warp] = v;
  __syncthreads();
  if (warp != 0) return v;
  return warp_reduce(lane < kWarps ? per_warp[lane] : MaxSum{-INFINITY, 0.f});
}

// One CTA per row. kVectorized: the row is read as float4 (k_tokens % 4 == 0, 16-byte aligned
// logits); otherwise one float at a time.
template <bool kVectorized>
__global__ void __launch_bounds__(kThreads)
    softmax_row_stats_kernel(float* row_max, float* row_sum, const float* __restrict__ logits,
                             int64_t k_tokens) {
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * k_tokens;
  MaxSum acc{-INFINITY, 0.f};
  if constexpr (kVectorized) {
    const float4* chunks = reinterpret_cast<const float4*>(row);
    const int64_t num_chunks = k_tokens / 4;
    for (int64_t first = threadIdx.x; first < num_chunks; first += kThreads * kLoadsInFlight) {
      float4 v[kLoadsInFlight];
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u) {
        const int64_t c = first + u * kThreads;
        v[u] = c < num_chunks ? __ldg(chunks + c)
                              : make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
      }
#pragma unroll
      for (int u = 0; u < kLoadsInFlight; ++u) acc = fold(acc, v[u]);
    }
  } else {
    for (int64_t j = threadIdx.x; j < k_tokens; j += kThreads) {
      acc = fold(acc, make_float4(__ldg(row + j), -INFINITY, -INFINITY, -INFINITY));
    }
  }
  acc = block_reduce(acc);
  if (threadIdx.x == 0) {
    row_max[blockIdx.x] = acc.max;
    row_sum[blockIdx.x] = acc.sum;
  }
}

// ================================================================================================
// attention mass
// ================================================================================================

// One row (b, h, i) of the logits as the mass kernels need it: p = exp(l - shift) * scale. A row
// that contributes nothing (sum 0, max -inf) gets shift = +inf and scale = 0, so that every
// finite or -inf logit gives exp(-inf) * 0 = 0 without a branch in the inner loop.
struct StagedRow {
  float shift;
  float scale;
  int64_t logit_offset;    // of l[b, h, i, 0]
  int64_t query_position;  // q_positions[i]
};

__device__ __forceinline__ float probability(float logit, const StagedRow& row) {
  return __expf(logit - row.shift) * row.scale;
}

// Rows r = b * queries + i of `head`, r in [first_row, first_row + count), count <= kThreads.
__device__ __forceinline__ void stage_rows(StagedRow* staged, const AttentionMassParams& p,
                                           int head, int first_row, int count) {
  if (threadIdx.x >= count) return;
  const int r = first_row + threadIdx.x;
  const int b = r / p.queries, i = r % p.queries;
  const int64_t stat = (static_cast<int64_t>(b) * p.heads + head) * p.queries + i;
  const float max = p.row_max[stat], sum = p.row_sum[stat];
  const bool empty = sum == 0.f || max == -INFINITY;
  staged[threadIdx.x] = {empty ? INFINITY : max, empty ? 0.f : 1.f / sum, stat * p.k_tokens,
                         p.q_positions[i]};
}

// grid (ceil(k_tokens / kThreads), heads): thread = (head, local key).
__global__ void __launch_bounds__(kThreads)
    vertical_mass_kernel(const __grid_constant__ AttentionMassParams p) {
  __shared__ StagedRow staged[kThreads];
  const int head = blockIdx.y;
  const int64_t key = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = key < p.k_tokens;
  const int rows = p.batch * p.queries;
  float mass = 0.f;
  for (int first = 0; first < rows; first += kThreads) {
    const int count = min(kThreads, rows - first);
    __syncthreads();  // the previous chunk is consumed
    stage_rows(staged, p, head, first, count);
    __syncthreads();
    if (!active) continue;
#pragma unroll 8
    for (int r = 0; r < count; ++r) {
      const StagedRow& row = staged[r];
      mass += probability(__ldg(p.logits + row.logit_offset + key), row);
    }
  }
  if (!active) return;
  const int64_t position = p.k_positions[key];
  if (position >= 0 && position < p.sequence_length) {
    p.vertical[head * p.sequence_length + position] = mass;
  }
}

// grid (ceil(sequence_length / kThreads), heads): thread = (head, diagonal).
__global__ void __launch_bounds__(kThreads)
    slash_mass_kernel(const __grid_constant__ AttentionMassParams p) {
  __shared__ StagedRow staged[kThreads];
  const int head = blockIdx.y;
  const int64_t diagonal = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = diagonal < p.sequence_length;
  const int rows = p.batch * p.queries;
  float mass = 0.f;
  for (int first = 0; first < rows; first += kThreads) {
    const int count = min(kThreads, rows - first);
    __syncthreads();
    stage_rows(staged, p, head, first, count);
    __syncthreads();
    // Selects instead of branches below, so that the unrolled rows' loads are in flight at once.
    if (!active) continue;
#pragma unroll 8
    for (int r = 0; r < count; ++r) {
      const StagedRow& row = staged[r];
      const int64_t key_position = row.query_position - diagonal;
      const bool in_sequence = key_position >= 0 && key_position < p.sequence_length;
      const int32_t key = in_sequence ? __ldg(p.key_slot_of_position + key_position) : -1;
      // A key on another shard (or none) adds exp(-inf) = 0.
      const float logit = key >= 0 ? __ldg(p.logits + row.logit_offset + key) : -INFINITY;
      mass += probability(logit, row);
    }
  }
  if (active) p.slash[head * p.sequence_length + diagonal] = mass;
}

// slot_of_position[k_positions[j]] = j; the caller has filled it with -1.
__global__ void __launch_bounds__(kThreads)
    scatter_key_slots_kernel(int32_t* slot_of_position, const int64_t* k_positions,
                             int64_t k_tokens, int64_t sequence_length) {
  const int64_t key = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (key >= k_tokens) return;
  const int64_t position = k_positions[key];
  if (position >= 0 && position < sequence_length) {
    slot_of_position[position] = static_cast<int32_t>(key);
  }
}

// ================================================================================================
// launchers
// ================================================================================================

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

unsigned blocks_for(int64_t threads) {
  return static_cast<unsigned>((threads + kThreads - 1) / kThreads);
}

cudaError_t validate_mass_params(const AttentionMassParams& p) {
  if (p.batch < 0 || p.heads < 0 || p.queries < 0 || p.k_tokens < 0 || p.sequence_length < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.heads > 65535 || p.sequence_length > INT_MAX || p.k_tokens > p.sequence_length ||
      static_cast<int64_t>(p.batch) * p.queries > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  if (p.heads == 0 || p.sequence_length == 0) return cudaSuccess;
  if (p.vertical == nullptr || p.slash == nullptr || p.key_slot_of_position == nullptr) {
    return cudaErrorInvalidValue;
  }
  const bool has_rows = p.batch > 0 && p.queries > 0;
  if (has_rows && (p.row_max == nullptr || p.row_sum == nullptr || p.q_positions == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.k_tokens > 0 && (p.k_positions == nullptr || (has_rows && p.logits == nullptr))) {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t launch_softmax_row_stats(float* row_max, float* row_sum, const float* logits,
                                     int64_t rows, int64_t k_tokens, cudaStream_t stream) {
  if (rows < 0 || k_tokens < 0 || rows > INT_MAX) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (row_max == nullptr || row_sum == nullptr || (k_tokens > 0 && logits == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const unsigned grid = static_cast<unsigned>(rows);
  if (k_tokens % 4 == 0 && aligned16(logits)) {
    softmax_row_stats_kernel<true>
        <<<grid, kThreads, 0, stream>>>(row_max, row_sum, logits, k_tokens);
  } else {
    softmax_row_stats_kernel<false>
        <<<grid, kThreads, 0, stream>>>(row_max, row_sum, logits, k_tokens);
  }
  return cudaGetLastError();
}

cudaError_t launch_attention_mass_from_logits(const AttentionMassParams& p, cudaStream_t stream) {
  if (const cudaError_t invalid = validate_mass_params(p); invalid != cudaSuccess) return invalid;
  if (p.heads == 0 || p.sequence_length == 0) return cudaSuccess;
  const size_t output_bytes = sizeof(float) * p.heads * p.sequence_length;
  // All bytes 0xff: every position starts as -1, "not in this shard".
  cudaError_t status =
      cudaMemsetAsync(p.key_slot_of_position, 0xff, sizeof(int32_t) * p.sequence_length, stream);
  if (status != cudaSuccess) return status;
  // Positions of other shards get no vertical thread; the slash kernel writes every diagonal.
  status = cudaMemsetAsync(p.vertical, 0, output_bytes, stream);
  if (status != cudaSuccess) return status;
  if (p.k_tokens > 0) {
    scatter_key_slots_kernel<<<blocks_for(p.k_tokens), kThreads, 0, stream>>>(
        p.key_slot_of_position, p.k_positions, p.k_tokens, p.sequence_length);
    vertical_mass_kernel<<<dim3(blocks_for(p.k_tokens), p.heads), kThreads, 0, stream>>>(p);
  }
  slash_mass_kernel<<<dim3(blocks_for(p.sequence_length), p.heads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace sparsering::kernels

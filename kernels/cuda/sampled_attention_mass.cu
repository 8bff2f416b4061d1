// Pattern estimation straight from the sampled queries and the keys
// (sampled_attention_mass_cuda.h): the logits are recomputed tile by tile on tensor cores
// (mma.sync.m16n8k16, the fragment layout of sparse_attention_forward.cu) and folded at once, never
// stored. Reading K twice (1 GiB at 128K tokens x 32 heads x dim 128) costs less than writing the
// fp32 logits once and reading them twice (1 GiB each time, plus K).
//   1. sampled_row_stats_kernel: one CTA per (chunk of 16 key tiles, head, sequence) keeps an
//      online (max, sum) per sampled query (Milakov & Gimelshein 2018) and writes it per chunk;
//      merge_row_stats_kernel folds the chunks in order.
//   2. sampled_attention_mass_kernel: one CTA per (chunk, head) recomputes p = exp(l - max) / sum
//      for every sequence of the batch; vertical: the column sums of each tile (per warp by
//      shuffles, then the four warps in order); slash: the tile's P is staged in shared memory
//      and summed along its 127 (or 191, for up to 128 queries) diagonals, one thread each. A
//      tile's keys are 64 consecutive positions starting at a multiple of 64, so a diagonal of
//      the sequence meets at most three tiles; gather_slash_kernel adds their partial sums in
//      position order. No atomics: the masses are bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "device_constants.cuh"
#include "device_online_softmax.cuh"
#include "device_ptx.cuh"
#include "sampled_attention_mass_cuda.h"

namespace sparsering::kernels {
namespace {

constexpr int kRows = 64;  // sampled queries per row group: 4 warps x 16 rows
constexpr int kKeys = 64;  // keys per tile
constexpr int kThreads = 128;
constexpr int kTilesPerChunk = 16;  // key tiles per CTA
constexpr int kMaxQueries = 128;
// Diagonal slots of a tile: sampled query i and tile column j meet in slot i - j + kKeys - 1.
constexpr int kSlots = kMaxQueries + kKeys - 1;
constexpr int kKeyTiles = kKeys / 8;  // n-tiles of a score tile

// Shared-memory operands: the Q rows of one row group and two K stages, rows padded by 16 bytes so
// that the 8 row addresses of one ldmatrix fall into distinct bank groups.
template <int kHeadDim>
struct Operands {
  static constexpr int kStride = kHeadDim + 8;  // elements between rows
  static constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks of a row
  static constexpr int kTileElems = kRows * kStride;
  static constexpr int kRowBytes = kStride * 2;
  static constexpr int kBytes = 3 * kTileElems * 2;  // Q, two K stages (2-byte elements)
  static_assert(kRows == kKeys, "the Q and K tiles share one shape");
};

// Mass kernel's shared memory after the operands: P of one tile (rows padded to 65 floats: the
// diagonal walk reads 65 i + c, conflict-free), per-warp column sums, per-row softmax shift and
// scale, and the chunk's vertical and slash accumulators.
constexpr int kPStride = kKeys + 1;
constexpr int kMassExtraBytes =
    static_cast<int>(sizeof(float)) *
    (kRows * kPStride + 4 * kKeys + 2 * kRows + kTilesPerChunk * kKeys + kTilesPerChunk * kSlots);

__host__ __device__ int64_t num_tiles(const SampledEstimationParams& p) {
  return p.k_tokens / kKeys;
}
__host__ __device__ int64_t num_chunks(const SampledEstimationParams& p) {
  return (num_tiles(p) + kTilesPerChunk - 1) / kTilesPerChunk;
}
__host__ __device__ int row_groups(int queries) { return (queries + kRows - 1) / kRows; }

// Starts copying rows group * 64 .. + 63 of the sampled queries of (b, h) (rows past `queries`
// zero-filled) into q_s.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void load_query_group(const SampledEstimationParams& p, int b, int h,
                                                 int group, Element* q_s) {
  using O = Operands<kHeadDim>;
  const Element* q = static_cast<const Element*>(p.q_sample);
#pragma unroll
  for (int i = 0; i < kRows * O::kChunks / kThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / O::kChunks, chunk = c % O::kChunks;
    const int query = group * kRows + r;
    const bool valid = query < p.queries;
    const int64_t row = (static_cast<int64_t>(b) * p.queries + (valid ? query : 0)) * p.heads + h;
    cp_async_16(q_s + r * O::kStride + chunk * 8, q + row * kHeadDim + chunk * 8, valid);
  }
}

// Starts copying key tile `tile` of (b, kv head kvh) into k_s.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void load_key_tile(const SampledEstimationParams& p, int b, int kvh,
                                              int64_t tile, Element* k_s) {
  using O = Operands<kHeadDim>;
  const Element* k = static_cast<const Element*>(p.k);
#pragma unroll
  for (int i = 0; i < kKeys * O::kChunks / kThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / O::kChunks, chunk = c % O::kChunks;
    const int64_t row =
        (static_cast<int64_t>(b) * p.k_tokens + tile * kKeys + r) * p.kv_heads + kvh;
    cp_async_16(k_s + r * O::kStride + chunk * 8, k + row * kHeadDim + chunk * 8, true);
  }
}

// ldmatrix lane addresses (as in sparse_attention_forward.cu): Q rows lane % 16 of the warp's 16,
// columns 8 (lane / 16); K keys 8 (lane / 16) + lane % 8, dims 8 ((lane / 8) % 2).
template <int kHeadDim>
__device__ __forceinline__ uint32_t query_lane(const void* q_s, int warp, int lane) {
  using O = Operands<kHeadDim>;
  return smem_address(q_s) + ((warp * 16 + lane % 16) * O::kStride + (lane / 16) * 8) * 2;
}
template <int kHeadDim>
__device__ __forceinline__ uint32_t key_lane(const void* k_s, int lane) {
  using O = Operands<kHeadDim>;
  return smem_address(k_s) + (((lane / 16) * 8 + lane % 8) * O::kStride + ((lane / 8) % 2) * 8) * 2;
}

// The warp's 16 x 64 raw scores q . k of one tile. Fragment notation of mma.m16n8k16: lane =
// 4 g + t; s[n] holds rows g (s[n][0..1]) and g + 8 (s[n][2..3]), keys 8 n + 2 t, + 1.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void tile_scores(const uint32_t (&q_frag)[kHeadDim / 16][4],
                                            uint32_t k_lane, float (&s)[kKeyTiles][4]) {
  using O = Operands<kHeadDim>;
#pragma unroll
  for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
  }
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < kKeyTiles / 2; ++np) {
      uint32_t kb[4];
      ldmatrix_x4(kb, k_lane + np * 16 * O::kRowBytes + kk * 32);
      mma_16816<Element>(s[2 * np], q_frag[kk], kb[0], kb[1]);
      mma_16816<Element>(s[2 * np + 1], q_frag[kk], kb[2], kb[3]);
    }
  }
}

// Scales the scores into logits: -inf for a row past the sampled queries or a key after its query.
__device__ __forceinline__ void scores_to_logits(const SampledEstimationParams& p, int group,
                                                 int warp, int g, int t, int64_t key_position0,
                                                 float (&s)[kKeyTiles][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int query = group * kRows + warp * 16 + g + 8 * r;
    // A padding row sees no key: its position lies before every key.
    const int64_t query_position = query < p.queries ? p.first_query_position + query : -1;
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int64_t key_position = key_position0 + 8 * n + 2 * t + j;
        float& v = s[n][2 * r + j];
        v = key_position > query_position ? -INFINITY : v * p.softmax_scale;
      }
    }
  }
}

// ================================================================================================
// 1. row statistics
// ================================================================================================

// Grid (chunks, heads, batch), kThreads threads. Writes the chunk's (max, sum) of every sampled
// query of (b, h) to row_partials: max at [(chunk * batch + b) * heads + h] * queries + query, the
// sum one workspace further.
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    sampled_row_stats_kernel(const __grid_constant__ SampledEstimationParams p) {
  using O = Operands<kHeadDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  Element* q_s = reinterpret_cast<Element*>(smem);
  Element* k_s = q_s + O::kTileElems;  // two stages
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int chunk = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (p.heads / p.kv_heads);
  const int64_t tile0 = static_cast<int64_t>(chunk) * kTilesPerChunk;
  const int64_t tiles_left = num_tiles(p) - tile0;
  const int tiles = static_cast<int>(tiles_left < kTilesPerChunk ? tiles_left : kTilesPerChunk);
  const int64_t partial_floats = num_chunks(p) * p.batch * p.heads * p.queries;

  for (int group = 0; group < row_groups(p.queries); ++group) {
    __syncthreads();  // the previous group is done with q_s and k_s
    load_query_group<Element, kHeadDim>(p, b, h, group, q_s);
    load_key_tile<Element, kHeadDim>(p, b, kvh, tile0, k_s);
    cp_async_commit();
    uint32_t q_frag[kHeadDim / 16][4];
    MaxSum row[2] = {{-INFINITY, 0.f}, {-INFINITY, 0.f}};  // rows g and g + 8 of the warp
    for (int i = 0; i < tiles; ++i) {
      cp_async_wait<0>();
      __syncthreads();  // tile i landed; every warp is done with tile i - 1's stage
      if (i == 0) {
#pragma unroll
        for (int kk = 0; kk < kHeadDim / 16; ++kk) {
          ldmatrix_x4(q_frag[kk], query_lane<kHeadDim>(q_s, warp, lane) + kk * 32);
        }
      }
      if (i + 1 < tiles) {
        load_key_tile<Element, kHeadDim>(p, b, kvh, tile0 + i + 1,
                                         k_s + ((i + 1) % 2) * O::kTileElems);
      }
      cp_async_commit();
      float s[kKeyTiles][4];
      tile_scores<Element, kHeadDim>(q_frag,
                                     key_lane<kHeadDim>(k_s + (i % 2) * O::kTileElems, lane), s);
      scores_to_logits(p, group, warp, g, t, p.k_positions[(tile0 + i) * kKeys], s);
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n) {
          tile_max = fmaxf(tile_max, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
        }
        const float max = fmaxf(row[r].max, tile_max);
        if (max == -INFINITY) continue;
        float sum = row[r].sum * __expf(row[r].max - max);
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n) {
          sum += __expf(s[n][2 * r] - max) + __expf(s[n][2 * r + 1] - max);
        }
        row[r] = {max, sum};
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
#pragma unroll
      for (int offset = 1; offset < 4; offset *= 2) {
        row[r] = merge(row[r], {__shfl_xor_sync(kFullMask, row[r].max, offset),
                                __shfl_xor_sync(kFullMask, row[r].sum, offset)});
      }
      const int query = group * kRows + warp * 16 + g + 8 * r;
      if (t == 0 && query < p.queries) {
        const int64_t at =
            ((static_cast<int64_t>(chunk) * p.batch + b) * p.heads + h) * p.queries + query;
        p.row_partials[at] = row[r].max;
        p.row_partials[partial_floats + at] = row[r].sum;
      }
    }
  }
}

// One thread per row (b, h, query): the chunks' partials folded in chunk order.
__global__ void __launch_bounds__(kThreads)
    merge_row_stats_kernel(const __grid_constant__ SampledEstimationParams p) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads * p.queries;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (row >= rows) return;
  const int64_t chunks = num_chunks(p), partial_floats = chunks * rows;
  MaxSum acc{-INFINITY, 0.f};
  for (int64_t c = 0; c < chunks; ++c) {
    acc = merge(acc,
                {p.row_partials[c * rows + row], p.row_partials[partial_floats + c * rows + row]});
  }
  p.row_max[row] = acc.max;
  p.row_sum[row] = acc.sum;
}

// ================================================================================================
// 2. attention mass
// ================================================================================================

// Grid (chunks, heads), kThreads threads; every sequence of the batch in turn. Writes the vertical
// mass of the chunk's keys and their tiles' diagonal partial sums (slash_partials[(h * tiles +
// tile) * kSlots + slot]).
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    sampled_attention_mass_kernel(const __grid_constant__ SampledEstimationParams p) {
  using O = Operands<kHeadDim>;
  extern __shared__ __align__(16) unsigned char smem[];
  Element* q_s = reinterpret_cast<Element*>(smem);
  Element* k_s = q_s + O::kTileElems;                       // two stages
  float* p_s = reinterpret_cast<float*>(smem + O::kBytes);  // [kRows][kPStride]
  float* column_s = p_s + kRows * kPStride;                 // [4 warps][kKeys]
  float* shift_s = column_s + 4 * kKeys;                    // [kRows]
  float* scale_s = shift_s + kRows;                         // [kRows]
  float* vertical_s = scale_s + kRows;                      // [kTilesPerChunk][kKeys]
  float* slash_s = vertical_s + kTilesPerChunk * kKeys;     // [kTilesPerChunk][kSlots]
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int chunk = blockIdx.x, h = blockIdx.y;
  const int kvh = h / (p.heads / p.kv_heads);
  const int64_t tile0 = static_cast<int64_t>(chunk) * kTilesPerChunk;
  const int64_t tiles_left = num_tiles(p) - tile0;
  const int tiles = static_cast<int>(tiles_left < kTilesPerChunk ? tiles_left : kTilesPerChunk);
  for (int i = threadIdx.x; i < kTilesPerChunk * (kKeys + kSlots); i += kThreads)
    vertical_s[i] = 0.f;

  for (int b = 0; b < p.batch; ++b) {
    for (int group = 0; group < row_groups(p.queries); ++group) {
      __syncthreads();  // the previous group is done with every buffer
      load_query_group<Element, kHeadDim>(p, b, h, group, q_s);
      load_key_tile<Element, kHeadDim>(p, b, kvh, tile0, k_s);
      cp_async_commit();
      // p = exp(l - shift) * scale; a row that contributes nothing (padding, no visible key in
      // the sequence) gets shift +inf and scale 0: every logit then gives 0, never NaN.
      if (threadIdx.x < kRows) {
        const int query = group * kRows + static_cast<int>(threadIdx.x);
        float shift = INFINITY, scale = 0.f;
        if (query < p.queries) {
          const int64_t row = (static_cast<int64_t>(b) * p.heads + h) * p.queries + query;
          const float max = p.sequence_row_max[row], sum = p.sequence_row_sum[row];
          if (max != -INFINITY && sum != 0.f) {
            shift = max;
            scale = 1.f / sum;
          }
        }
        shift_s[threadIdx.x] = shift;
        scale_s[threadIdx.x] = scale;
      }
      uint32_t q_frag[kHeadDim / 16][4];
      float shift[2], scale[2];
      for (int i = 0; i < tiles; ++i) {
        cp_async_wait<0>();
        __syncthreads();  // tile i landed; the previous tile's P and column sums are consumed
        if (i == 0) {
#pragma unroll
          for (int kk = 0; kk < kHeadDim / 16; ++kk) {
            ldmatrix_x4(q_frag[kk], query_lane<kHeadDim>(q_s, warp, lane) + kk * 32);
          }
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            shift[r] = shift_s[warp * 16 + g + 8 * r];
            scale[r] = scale_s[warp * 16 + g + 8 * r];
          }
        }
        if (i + 1 < tiles) {
          load_key_tile<Element, kHeadDim>(p, b, kvh, tile0 + i + 1,
                                           k_s + ((i + 1) % 2) * O::kTileElems);
        }
        cp_async_commit();
        float s[kKeyTiles][4];
        tile_scores<Element, kHeadDim>(q_frag,
                                       key_lane<kHeadDim>(k_s + (i % 2) * O::kTileElems, lane), s);
        scores_to_logits(p, group, warp, g, t, p.k_positions[(tile0 + i) * kKeys], s);
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[n][e] = __expf(s[n][e] - shift[e >> 1]) * scale[e >> 1];
            p_s[(warp * 16 + g + 8 * (e >> 1)) * kPStride + 8 * n + 2 * t + (e & 1)] = s[n][e];
          }
          // Column sums of the warp's 16 rows: rows g and g + 8 here, then over g.
          float column[2] = {s[n][0] + s[n][2], s[n][1] + s[n][3]};
#pragma unroll
          for (int j = 0; j < 2; ++j) {
#pragma unroll
            for (int offset = 4; offset < 32; offset *= 2) {
              column[j] += __shfl_xor_sync(kFullMask, column[j], offset);
            }
          }
          if (g == 0) {
            column_s[warp * kKeys + 8 * n + 2 * t] = column[0];
            column_s[warp * kKeys + 8 * n + 2 * t + 1] = column[1];
          }
        }
        __syncthreads();  // P and the column sums are complete
        if (threadIdx.x < kKeys) {
          const int c = static_cast<int>(threadIdx.x);
          vertical_s[i * kKeys + c] +=
              column_s[c] + column_s[kKeys + c] + column_s[2 * kKeys + c] + column_s[3 * kKeys + c];
        }
        if (threadIdx.x < 2 * kKeys - 1) {
          // Diagonal x of the tile: rows r and columns r - x + kKeys - 1, rows in order.
          const int x = static_cast<int>(threadIdx.x);
          float sum = 0.f;
#pragma unroll 8
          for (int r = 0; r < kRows; ++r) {
            const int c = r - x + kKeys - 1;
            if (c >= 0 && c < kKeys) sum += p_s[r * kPStride + c];
          }
          slash_s[i * kSlots + group * kRows + x] += sum;
        }
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < tiles * kKeys; i += kThreads) {
    // Positions are trusted to lie in [0, sequence_length); ones outside are skipped rather than
    // written out of bounds.
    const int64_t position = p.k_positions[tile0 * kKeys + i];
    if (position >= 0 && position < p.sequence_length) {
      p.vertical[h * p.sequence_length + position] = vertical_s[i];
    }
  }
  for (int i = threadIdx.x; i < tiles * kSlots; i += kThreads) {
    p.slash_partials[(h * num_tiles(p) + tile0) * kSlots + i] = slash_s[i];
  }
}

// tile_of_position_tile[k_positions[64 t] / 64] = t; the caller has filled it with -1.
__global__ void __launch_bounds__(kThreads)
    map_key_tiles_kernel(const __grid_constant__ SampledEstimationParams p) {
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (tile >= num_tiles(p)) return;
  const int64_t position = p.k_positions[tile * kKeys];
  if (position >= 0 && position < p.sequence_length) {
    p.tile_of_position_tile[position / kKeys] = static_cast<int32_t>(tile);
  }
}

// Grid (ceil(sequence_length / kThreads), heads): slash[h, d], the partial sums of the (at most
// three) tiles that diagonal d crosses, in position order; 0 where it crosses none of this shard.
__global__ void __launch_bounds__(kThreads)
    gather_slash_kernel(const __grid_constant__ SampledEstimationParams p) {
  const int64_t d = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int h = blockIdx.y;
  if (d >= p.sequence_length) return;
  // Keys of diagonal d: positions first_query - d .. first_query + queries - 1 - d.
  const int64_t last = p.first_query_position + p.queries - 1 - d;
  const int64_t first = d < p.first_query_position ? p.first_query_position - d : 0;
  float sum = 0.f;
  for (int64_t position_tile = first / kKeys; last >= 0 && position_tile <= last / kKeys;
       ++position_tile) {
    const int32_t tile = p.tile_of_position_tile[position_tile];
    if (tile < 0) continue;
    const int64_t slot = d - p.first_query_position + position_tile * kKeys + kKeys - 1;
    sum += p.slash_partials[(h * num_tiles(p) + tile) * kSlots + slot];
  }
  p.slash[h * p.sequence_length + d] = sum;
}

// ================================================================================================
// launchers
// ================================================================================================

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

cudaError_t validate(const SampledEstimationParams& p) {
  if (p.batch < 0 || p.batch > 65535 || p.heads <= 0 || p.heads > 65535 || p.kv_heads <= 0 ||
      p.heads % p.kv_heads != 0 || (p.head_dim != 64 && p.head_dim != 128) || p.queries < 1 ||
      p.queries > kMaxQueries || p.k_tokens < 0 || p.k_tokens % kKeys != 0 ||
      p.sequence_length <= 0 || p.sequence_length % kKeys != 0 || p.sequence_length > INT_MAX ||
      p.k_tokens > p.sequence_length || p.first_query_position < 0 ||
      p.first_query_position + p.queries > p.sequence_length || !std::isfinite(p.softmax_scale)) {
    return cudaErrorInvalidValue;
  }
  if (p.element_type != ElementType::kBFloat16 && p.element_type != ElementType::kFloat16) {
    return cudaErrorInvalidValue;
  }
  if (p.batch > 0 && (p.q_sample == nullptr || !aligned16(p.q_sample)))
    return cudaErrorInvalidValue;
  if (p.batch > 0 && p.k_tokens > 0 &&
      (p.k == nullptr || !aligned16(p.k) || p.k_positions == nullptr)) {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <typename Element, int kHeadDim>
cudaError_t launch_row_stats_for(const SampledEstimationParams& p, cudaStream_t stream) {
  constexpr int kSmem = Operands<kHeadDim>::kBytes;
  auto* kernel = sampled_row_stats_kernel<Element, kHeadDim>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  if (num_tiles(p) > 0) {
    kernel<<<dim3(static_cast<unsigned>(num_chunks(p)), p.heads, p.batch), kThreads, kSmem,
             stream>>>(p);
  }
  const int64_t rows = static_cast<int64_t>(p.batch) * p.heads * p.queries;
  merge_row_stats_kernel<<<static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads, 0,
                           stream>>>(p);
  return cudaGetLastError();
}

template <typename Element, int kHeadDim>
cudaError_t launch_mass_for(const SampledEstimationParams& p, cudaStream_t stream) {
  constexpr int kSmem = Operands<kHeadDim>::kBytes + kMassExtraBytes;
  auto* kernel = sampled_attention_mass_kernel<Element, kHeadDim>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  err = cudaMemsetAsync(p.vertical, 0, sizeof(float) * p.heads * p.sequence_length, stream);
  if (err != cudaSuccess) return err;
  // All bytes 0xff: every position tile starts as -1, "not in this shard".
  err = cudaMemsetAsync(p.tile_of_position_tile, 0xff,
                        sizeof(int32_t) * (p.sequence_length / kKeys), stream);
  if (err != cudaSuccess) return err;
  if (num_tiles(p) > 0 && p.batch > 0) {
    map_key_tiles_kernel<<<static_cast<unsigned>((num_tiles(p) + kThreads - 1) / kThreads),
                           kThreads, 0, stream>>>(p);
    kernel<<<dim3(static_cast<unsigned>(num_chunks(p)), p.heads), kThreads, kSmem, stream>>>(p);
  }
  gather_slash_kernel<<<dim3(static_cast<unsigned>((p.sequence_length + kThreads - 1) / kThreads),
                             p.heads),
                        kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <template <typename, int> class Launch>
cudaError_t dispatch(const SampledEstimationParams& p, cudaStream_t stream) {
  const bool bf16 = p.element_type == ElementType::kBFloat16;
  if (p.head_dim == 64) {
    return bf16 ? Launch<__nv_bfloat16, 64>::run(p, stream) : Launch<__half, 64>::run(p, stream);
  }
  return bf16 ? Launch<__nv_bfloat16, 128>::run(p, stream) : Launch<__half, 128>::run(p, stream);
}

template <typename Element, int kHeadDim>
struct RowStatsLaunch {
  static cudaError_t run(const SampledEstimationParams& p, cudaStream_t stream) {
    return launch_row_stats_for<Element, kHeadDim>(p, stream);
  }
};

template <typename Element, int kHeadDim>
struct MassLaunch {
  static cudaError_t run(const SampledEstimationParams& p, cudaStream_t stream) {
    return launch_mass_for<Element, kHeadDim>(p, stream);
  }
};

}  // namespace

int64_t sampled_row_stats_workspace_floats(const SampledEstimationParams& p) {
  return num_chunks(p) * p.batch * p.heads * p.queries;
}

int64_t sampled_slash_workspace_floats(const SampledEstimationParams& p) {
  return static_cast<int64_t>(p.heads) * num_tiles(p) * kSlots;
}

cudaError_t launch_sampled_row_stats(const SampledEstimationParams& p, cudaStream_t stream) {
  if (const cudaError_t invalid = validate(p); invalid != cudaSuccess) return invalid;
  if (p.batch == 0) return cudaSuccess;
  if (p.row_max == nullptr || p.row_sum == nullptr ||
      (p.k_tokens > 0 && p.row_partials == nullptr)) {
    return cudaErrorInvalidValue;
  }
  return dispatch<RowStatsLaunch>(p, stream);
}

cudaError_t launch_sampled_attention_mass(const SampledEstimationParams& p, cudaStream_t stream) {
  if (const cudaError_t invalid = validate(p); invalid != cudaSuccess) return invalid;
  if (p.vertical == nullptr || p.slash == nullptr || p.tile_of_position_tile == nullptr ||
      (p.batch > 0 && (p.sequence_row_max == nullptr || p.sequence_row_sum == nullptr)) ||
      (p.k_tokens > 0 && p.slash_partials == nullptr)) {
    return cudaErrorInvalidValue;
  }
  return dispatch<MassLaunch>(p, stream);
}

}  // namespace sparsering::kernels

// The backward's deterministic dK/dV kernel over the vertical columns (see
// sparse_attention_backward.cu for the schedules). Columns are single keys scattered over the
// sequence, so a contiguous 64-key tile holds few of them: walking every query block that attends
// one of a tile's columns as a whole 64-key tensor-core tile wastes most of each product. Here one
// CTA owns a chunk of 64 column keys gathered from anywhere in the shard (t_column_keys: the keys
// of one kv head that some query attends as a column, ascending), so each query tile it meets is
// a tile of 64 mostly attended keys. It runs after the active-block kernel
// (sparse_attention_backward_dkdv.cu) in stream order and adds into the same dk/dv rows; every
// column key of a kv head lies in exactly one chunk, so no two CTAs write one row and the result
// stays bitwise reproducible.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>

#include "device_constants.cuh"
#include "device_ptx.cuh"
#include "sparse_attention_backward_dkdv_tile.cuh"
#include "sparse_attention_backward_kv_major.cuh"
#include "sparse_attention_backward_launch.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {
namespace {

static_assert(kColumnKeyChunk == kTile, "a chunk of column keys is one kv tile");

// Starts copying the K and V rows of the chunk's keys (local tokens, -1 = padding, zero-filled)
// into shared memory with cp.async over the CTA, as one committed group.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void load_gathered_kv(const SparseAttentionParams& p,
                                                 const int32_t* keys, int kvh, int b,
                                                 Element* k_dst, Element* v_dst) {
  using G = TileGeometry<kHeadDim>;
  const int64_t token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const Element* k_g = static_cast<const Element*>(p.k);
  const Element* v_g = static_cast<const Element*>(p.v);
#pragma unroll
  for (int i = 0; i < G::kChunksPerThread; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / G::kChunksPerRow;
    const int chunk = c % G::kChunksPerRow;
    const int token = keys[r];
    const int64_t offset = (static_cast<int64_t>(b) * p.k_tokens + max(token, 0)) * token_stride +
                           kvh * kHeadDim + chunk * 8;
    cp_async_16(k_dst + r * G::kStride + chunk * 8, k_g + offset, token >= 0);
    cp_async_16(v_dst + r * G::kStride + chunk * 8, v_g + offset, token >= 0);
  }
  cp_async_commit();
}

// Global position of local key token `token` (INT_MAX for a padding key: later than any query).
__device__ __forceinline__ int key_position(const SparseAttentionParams& p, int token) {
  return token < 0 ? INT_MAX
                   : p.k_block_ids[token / p.block_size] * p.block_size + token % p.block_size;
}

// The column pass walks the transposed column rows of its chunk's keys: row_of(j) is the
// transposed column row of key j ((b * num_kv_heads + kvh) * k_tokens + token), or -1 for a padding
// key. column_entry_range finds the smallest and largest entry id of those rows (lo > hi when they
// are empty), so that only windows holding entries are visited. CTA-wide; uses misc[1..2].
template <typename RowOf>
__device__ __forceinline__ void column_entry_range(const SparseAttentionBackwardParams& bp,
                                                   const RowOf& row_of, int32_t* misc, int& lo,
                                                   int& hi) {
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (threadIdx.x == 0) {
    misc[1] = INT_MAX;
    misc[2] = INT_MIN;
  }
  __syncthreads();
  int lowest = INT_MAX;
  int highest = INT_MIN;
  for (int j = warp; j < kTile; j += kWarps) {
    const int64_t row = row_of(j);
    if (row < 0) continue;  // warp-uniform
    const int c_end = bp.t_column_row_offsets[row + 1];
    for (int c = bp.t_column_row_offsets[row] + lane; c < c_end; c += 32) {
      const int entry = bp.t_column_entries[c];
      lowest = min(lowest, entry);
      highest = max(highest, entry);
    }
  }
  lowest = __reduce_min_sync(kFullMask, lowest);
  highest = __reduce_max_sync(kFullMask, highest);
  if (lane == 0) {
    atomicMin(&misc[1], lowest);
    atomicMax(&misc[2], highest);
  }
  __syncthreads();
  lo = misc[1];
  hi = misc[2];
}

// The entries of window [window, window + kMaskSlots) that attend any of the kTile keys, ascending
// in sm.entries, each with its 64-bit mask of attended keys in sm.key_masks; returns their number.
// CTA-wide: call it only when every warp is done reading the previous window's entries and masks.
template <typename Element, int kHeadDim, typename RowOf>
__device__ __forceinline__ int build_column_window(const SparseAttentionBackwardParams& bp,
                                                   const RowOf& row_of, int window,
                                                   const DkdvSmem<Element, kHeadDim>& sm) {
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  for (int i = static_cast<int>(threadIdx.x); i < kMaskSlots; i += kThreads) sm.key_masks[i] = 0;
  __syncthreads();
  // Warp w sets bit j for keys j = w, w + 4, ...; the OR is order-independent.
  for (int j = warp; j < kTile; j += kWarps) {
    const int64_t row = row_of(j);
    if (row < 0) continue;  // warp-uniform
    const int c_end = bp.t_column_row_offsets[row + 1];
    for (int c = bp.t_column_row_offsets[row] + lane; c < c_end; c += 32) {
      const int slot = bp.t_column_entries[c] - window;
      if (slot >= 0 && slot < kMaskSlots) {
        atomicOr(reinterpret_cast<unsigned long long*>(&sm.key_masks[slot]), 1ull << j);
      }
    }
  }
  __syncthreads();
  // Ordered in-place compaction by warp 0: a non-empty slot s moves to position
  // (non-empty slots before s) <= s, read by the whole warp before any lane writes.
  if (warp == 0) {
    int count = 0;
    for (int s0 = 0; s0 < kMaskSlots; s0 += 32) {
      const uint64_t mask = sm.key_masks[s0 + lane];
      const unsigned nonempty = __ballot_sync(kFullMask, mask != 0);
      __syncwarp();
      if (mask != 0) {
        const int position = count + __popc(nonempty & ((1u << lane) - 1));
        sm.key_masks[position] = mask;
        sm.entries[position] = window + s0 + lane;
      }
      count += __popc(nonempty);
      __syncwarp();
    }
    if (lane == 0) sm.misc[0] = count;
  }
  __syncthreads();
  return sm.misc[0];
}

// Grid (t_column_key_capacity / 64, num_kv_heads, batch), 128 threads; chunk blockIdx.x holds keys
// t_column_keys[row][64 x .. 64 x + 63] of row b * num_kv_heads + kvh. The products are those of
// the active-block kernel; the query tiles are the entries of the chunk keys' transposed column
// rows, visited in windows of kMaskSlots entry ids in ascending order, each entry as one tile
// masked to the chunk keys it attends.
template <typename Element, int kHeadDim, bool kDocumentMask>
__global__ void __launch_bounds__(kThreads) sparse_attention_backward_dkdv_columns_kernel(
    const __grid_constant__ SparseAttentionBackwardParams bp) {
  constexpr int kDTiles = kHeadDim / 8;
  const SparseAttentionParams& p = bp.forward;
  const int kvh = blockIdx.y;
  const int b = blockIdx.z;
  const int64_t kv_row = static_cast<int64_t>(b) * p.num_kv_heads + kvh;
  const int32_t* keys = bp.t_column_keys + kv_row * bp.t_column_key_capacity +
                        static_cast<int64_t>(blockIdx.x) * kTile;
  if (keys[0] < 0) return;  // past this kv head's column keys (CTA-uniform)

  extern __shared__ __align__(16) unsigned char smem[];
  const DkdvSmem<Element, kHeadDim> sm = dkdv_smem_frame<Element, kHeadDim, kDocumentMask>(smem);
  load_gathered_kv<Element, kHeadDim>(p, keys, kvh, b, sm.k, sm.v);

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int row_key[2] = {keys[warp * 16 + g], keys[warp * 16 + g + 8]};
  const int key_pos[2] = {key_position(p, row_key[0]), key_position(p, row_key[1])};
  // The chunk's earliest key bounds which query tiles can see any of it (every warp computes it).
  const int first_pos = __reduce_min_sync(
      kFullMask, min(key_position(p, keys[lane]), key_position(p, keys[lane + 32])));

  const int64_t t_row0 = kv_row * p.k_tokens;
  const auto row_of = [&](int j) -> int64_t {
    const int token = keys[j];
    return token < 0 ? -1 : t_row0 + token;
  };
  int entry_lo = 0;
  int entry_hi = -1;
  column_entry_range(bp, row_of, sm.misc, entry_lo, entry_hi);

  float dk[kDTiles][4];
  float dv[kDTiles][4];
  zero_dkdv<kHeadDim>(dk, dv);
  QueryTiles tiles;
  tiles.entries = sm.entries;
  tiles.key_masks = sm.key_masks;
  tiles.q_block_ids = p.q_block_ids;
  tiles.num_q_blocks = p.q_tokens / p.block_size;
  tiles.block_size = p.block_size;
  tiles.tiles_per_block = p.block_size / kTile;
  tiles.k_pos0 = first_pos;
  tiles.k_pos_last = INT_MAX;  // unused: column tiles are always masked
  for (int window = entry_lo; window <= entry_hi; window += kMaskSlots) {
    // accumulate_dkdv may leave other warps reading the previous window's entries: sync first.
    __syncthreads();
    tiles.num_tiles = build_column_window(bp, row_of, window, sm) * tiles.tiles_per_block;
    accumulate_dkdv<Element, kHeadDim, kDocumentMask>(tiles, bp, b, sm, key_pos, dk, dv);
  }
  cp_async_wait<0>();  // K/V copies, when no query tile was visible at all

  const int64_t token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  int64_t row_offset[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row_offset[i] =
        row_key[i] < 0
            ? -1
            : (static_cast<int64_t>(b) * p.k_tokens + row_key[i]) * token_stride + kvh * kHeadDim;
  }
  add_dkdv_rows<kHeadDim>(dk, dv, p.softmax_scale, row_offset, bp.dk, bp.dv);
}

}  // namespace

template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_deterministic_dkdv_columns(const SparseAttentionBackwardParams& bp,
                                              cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  if (bp.t_column_key_capacity == 0) return cudaSuccess;  // no column keys in this shard pair
  const dim3 grid(bp.t_column_key_capacity / kTile, p.num_kv_heads, p.batch);
  return launch(sparse_attention_backward_dkdv_columns_kernel<Element, kHeadDim, kDocumentMask>,
                grid, dkdv_smem_bytes<Element, kHeadDim, kDocumentMask>(), stream, bp);
}

#define SPARSERING_INSTANTIATE(Element, kHeadDim, kDocumentMask)                            \
  template cudaError_t launch_deterministic_dkdv_columns<Element, kHeadDim, kDocumentMask>( \
      const SparseAttentionBackwardParams&, cudaStream_t);
SPARSERING_BACKWARD_VARIANTS(SPARSERING_INSTANTIATE)
#undef SPARSERING_INSTANTIATE

}  // namespace sparsering::kernels

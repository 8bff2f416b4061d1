// What the kv-major backward kernels share (sparse_attention_backward_dkdv.cu,
// sparse_attention_backward_kv.cu, sparse_attention_backward_wgmma.cuh): the walk over the
// query tiles that meet one kv tile (the transposed index), the copies of a query tile and of the
// resident K/V tile, and the shared-memory frame of the mma.sync ones.
#pragma once

#include <cstdint>

#include "device_ptx.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {

// The query tiles one kv tile meets, in order: for each entry (q_head * num_q_blocks + qb) the
// block_size / kTile sub-tiles of query block qb. Tiles whose last query lies before the kv tile's
// first key are causally empty and skipped by next(). For active blocks (key_masks == nullptr) an
// entry attends every key of the kv tile; for vertical columns key_masks[i] has bit j set when
// entry i attends key j of the tile.
// Where one query tile lives: its query head, first local token and first global position.
struct QueryTile {
  int head;
  int token0;
  int pos0;
};

struct QueryTiles {
  const int32_t* entries;
  const uint64_t* key_masks;
  const int32_t* q_block_ids;
  int num_q_blocks;
  int block_size;
  int tiles_per_block;
  int num_tiles;
  int k_pos0;      // global position of the kv tile's first key
  int k_pos_last;  // and of its last key (tiles of 64 or 128 keys)

  __device__ int entry(int it) const { return entries[it / tiles_per_block]; }
  __device__ int pos0(int it) const {
    return q_block_ids[entry(it) % num_q_blocks] * block_size + (it % tiles_per_block) * kTile;
  }
  __device__ int next(int it) const {
    while (it < num_tiles && k_pos0 > pos0(it) + kTile - 1) ++it;
    return it;
  }
  __device__ QueryTile tile(int it) const {
    const int e = entry(it);
    const int qb = e % num_q_blocks;
    const int sub = (it % tiles_per_block) * kTile;
    return {e / num_q_blocks, qb * block_size + sub, q_block_ids[qb] * block_size + sub};
  }
  __device__ uint64_t key_mask(int it) const {
    return key_masks == nullptr ? ~0ull : key_masks[it / tiles_per_block];
  }
  // An active-block tile whose first query is at or after the kv tile's last key needs no mask.
  __device__ bool needs_mask(int it) const { return key_masks != nullptr || k_pos_last > pos0(it); }
};

// Copies a query tile (Q, dO, lse, delta and with kDocumentMask the key starts) into shared
// memory with cp.async (not committed), spread over kNumThreads threads.
template <typename Element, int kHeadDim, int kNumThreads, bool kDocumentMask>
__device__ __forceinline__ void load_query_tile(const QueryTile& tile,
                                                const SparseAttentionBackwardParams& bp, int b,
                                                Element* q_dst, Element* do_dst, float* lse_dst,
                                                float* delta_dst, int32_t* key_start_dst) {
  using G = TileGeometry<kHeadDim>;
  const SparseAttentionParams& p = bp.forward;
  const int head = tile.head;
  const int token0 = tile.token0;
  const int64_t token_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const int64_t offset =
      (static_cast<int64_t>(b) * p.q_tokens + token0) * token_stride + head * kHeadDim;
  const Element* q_g = static_cast<const Element*>(p.q) + offset;
  const Element* do_g = static_cast<const Element*>(bp.dout) + offset;
  constexpr int kChunks = kTile * G::kChunksPerRow / kNumThreads;
  static_assert(kTile * G::kChunksPerRow % kNumThreads == 0, "tile copy must split evenly");
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kNumThreads;
    const int r = c / G::kChunksPerRow;
    const int chunk = c % G::kChunksPerRow;
    cp_async_16(q_dst + r * G::kStride + chunk * 8, q_g + r * token_stride + chunk * 8, true);
    cp_async_16(do_dst + r * G::kStride + chunk * 8, do_g + r * token_stride + chunk * 8, true);
  }
  // 64 lse and 64 delta values: 16 chunks of 16 bytes each.
  const int64_t stat = (static_cast<int64_t>(b) * p.num_heads + head) * p.q_tokens + token0;
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < 16) {
    cp_async_16(lse_dst + 4 * tid, p.lse + stat + 4 * tid, true);
  } else if (tid < 32) {
    cp_async_16(delta_dst + 4 * (tid - 16), bp.delta + stat + 4 * (tid - 16), true);
  } else if (kDocumentMask && tid < 48) {
    // 64 key starts, [batch, q_tokens]: 16 chunks of 16 bytes.
    const int32_t* starts = p.q_key_start + static_cast<int64_t>(b) * p.q_tokens + token0;
    cp_async_16(key_start_dst + 4 * (tid - 32), starts + 4 * (tid - 32), true);
  }
}

// The query tiles that meet kv tile `k_tile` of kKeys keys (inside kv block k_tile / (block_size /
// kKeys)) of kv head kvh in sequence b: the transposed block index row of its block.
template <int kKeys>
__device__ __forceinline__ QueryTiles
transposed_block_tiles(const SparseAttentionBackwardParams& bp, int k_tile, int kvh, int b) {
  const SparseAttentionParams& p = bp.forward;
  const int bs = p.block_size;
  const int k_tiles_per_block = bs / kKeys;
  const int kb = k_tile / k_tiles_per_block;
  const int64_t t_row = (static_cast<int64_t>(b) * p.num_kv_heads + kvh) * (p.k_tokens / bs) + kb;
  const int entry_begin = bp.t_block_row_offsets[t_row];
  QueryTiles tiles;
  tiles.entries = bp.t_block_entries + entry_begin;
  tiles.key_masks = nullptr;
  tiles.q_block_ids = p.q_block_ids;
  tiles.num_q_blocks = p.q_tokens / bs;
  tiles.block_size = bs;
  tiles.tiles_per_block = bs / kTile;
  tiles.num_tiles = (bp.t_block_row_offsets[t_row + 1] - entry_begin) * tiles.tiles_per_block;
  tiles.k_pos0 = p.k_block_ids[kb] * bs + (k_tile % k_tiles_per_block) * kKeys;
  tiles.k_pos_last = tiles.k_pos0 + kKeys - 1;
  return tiles;
}

// The kv tile a kv-major CTA owns, kv tile k_tile of kKeys keys of kv head kvh in sequence b:
// element offset of its first key in k, v, dk and dv ([batch, k_tokens, num_kv_heads, kHeadDim],
// tokens token_stride elements apart).
template <int kHeadDim, int kKeys>
__device__ __forceinline__ int64_t kv_tile_offset(const SparseAttentionParams& p,
                                                  int64_t token_stride, int k_tile, int kvh,
                                                  int b) {
  return (static_cast<int64_t>(b) * p.k_tokens + k_tile * kKeys) * token_stride + kvh * kHeadDim;
}

// Starts copying the kKeys K and V rows of the kv tile at element offset kv_offset into shared
// memory with cp.async over kNumThreads threads, as one committed group.
template <typename Element, int kHeadDim, int kKeys, int kNumThreads>
__device__ __forceinline__ void load_kv_tile(const SparseAttentionParams& p, int64_t kv_offset,
                                             Element* k_dst, Element* v_dst) {
  using G = TileGeometry<kHeadDim>;
  constexpr int kChunks = kKeys * G::kChunksPerRow / kNumThreads;
  static_assert(kKeys * G::kChunksPerRow % kNumThreads == 0, "tile copy must split evenly");
  const int64_t token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const Element* k_g = static_cast<const Element*>(p.k) + kv_offset;
  const Element* v_g = static_cast<const Element*>(p.v) + kv_offset;
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kNumThreads;
    const int r = c / G::kChunksPerRow;
    const int chunk = c % G::kChunksPerRow;
    cp_async_16(k_dst + r * G::kStride + chunk * 8, k_g + r * token_stride + chunk * 8, true);
    cp_async_16(v_dst + r * G::kStride + chunk * 8, v_g + r * token_stride + chunk * 8, true);
  }
  cp_async_commit();
}

// Shared-memory buffers of the per-kv-tile kernels (K and V of the tile stay resident).
template <typename Element, int kHeadDim>
struct DkdvSmem {
  Element* k;
  Element* v;
  Element* q;            // kStages query tiles
  Element* dout;         // kStages dO tiles
  Element* ds;           // dS^T of the current query tile, [key][query] (kPStride), with dQ only
  Element* p;            // P of the current query tile, [query][key] (per-kv-block kernel)
  float* lse;            // kStages x kTile
  float* delta;          // kStages x kTile
  int32_t* key_start;    // kStages x kTile first visible keys of the queries (document masking)
  uint64_t* key_masks;   // kMaskSlots: column key masks of one window of entries (deterministic)
  int32_t* entries;      // kMaskSlots: the entries of the non-empty masks, ascending
  int32_t* misc;         // [0]: number of column entries in the window, [1..2]: entry range
  QueryTile* tile_ring;  // 3 prefetched query tiles (per-kv-block kernel)
};

}  // namespace sparsering::kernels

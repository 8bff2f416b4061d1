// The kv-tile walk of the backward's per-query-tile kernel (sparse_attention_backward_dq.cu):
// which kv tiles a 64-row query tile visits, and the load of one tile into shared memory with the
// global position and local token of every key, so that dK/dV rows of a gathered column chunk can
// be scattered back.
#pragma once

#include <climits>
#include <cstdint>

#include "device_ptx.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"
#include "sparse_index_row.cuh"

namespace sparsering::kernels {

// The kv tiles one query tile visits, in order: the kTile-key sub-tiles of its active blocks
// (block_size / kTile per block), then its vertical columns in chunks of kTile. Block tiles whose
// first key lies after the tile's last query are causally empty and skipped by next().
struct BackwardKeyTiles {
  const int32_t* block_cols;   // this row's active kv blocks (local ids)
  const int32_t* columns;      // this row's vertical columns (local key tokens)
  const int32_t* k_block_ids;  // local kv block -> global block id
  int block_size;
  int tiles_per_block;
  int num_block_tiles;
  int num_columns;
  int num_tiles;
  int q_pos0;  // global position of the tile's first query row

  __device__ bool is_block(int it) const { return it < num_block_tiles; }
  __device__ int block_token0(int it) const {
    return block_cols[it / tiles_per_block] * block_size + (it % tiles_per_block) * kTile;
  }
  __device__ int block_pos0(int it) const {
    return k_block_ids[block_cols[it / tiles_per_block]] * block_size +
           (it % tiles_per_block) * kTile;
  }
  // First tile >= it that may hold a visible key.
  __device__ int next(int it) const {
    while (it < num_block_tiles && block_pos0(it) > q_pos0 + kTile - 1) ++it;
    return it;
  }
  // A block tile entirely at or before the first query needs no causal mask; column chunks have
  // arbitrary positions and padding, so they are always masked.
  __device__ bool needs_mask(int it) const {
    return !is_block(it) || block_pos0(it) + kTile - 1 > q_pos0;
  }
};

// With columns_only the active blocks are left out (they are done by the per-kv-block kernel).
__device__ __forceinline__ BackwardKeyTiles make_backward_key_tiles(const SparseAttentionParams& p,
                                                                    int b, int h, int q_tile,
                                                                    bool columns_only) {
  const int tiles_per_block = p.block_size / kTile;
  const int qb = q_tile / tiles_per_block;
  const auto [block_begin, block_end, column_begin, column_end] = index_row(p, b, h, qb);
  BackwardKeyTiles tiles;
  tiles.block_cols = p.block_cols + block_begin;
  tiles.columns = p.column_indices + column_begin;
  tiles.k_block_ids = p.k_block_ids;
  tiles.block_size = p.block_size;
  tiles.tiles_per_block = tiles_per_block;
  tiles.num_block_tiles = columns_only ? 0 : (block_end - block_begin) * tiles_per_block;
  tiles.num_columns = column_end - column_begin;
  tiles.num_tiles = tiles.num_block_tiles + (tiles.num_columns + kTile - 1) / kTile;
  tiles.q_pos0 = p.q_block_ids[qb] * p.block_size + (q_tile % tiles_per_block) * kTile;
  return tiles;
}

// As in the forward, plus the local token of every key (-1 for padding) so that dK/dV rows of a
// gathered column chunk can be scattered back.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void load_backward_key_tile(const BackwardKeyTiles& tiles, int it,
                                                       const Element* k_head, const Element* v_head,
                                                       int64_t token_stride, Element* k_dst,
                                                       Element* v_dst, int* kpos_dst,
                                                       int* ktok_dst) {
  using G = TileGeometry<kHeadDim>;
  const bool is_block = tiles.is_block(it);
  const int token0 = is_block ? tiles.block_token0(it) : 0;
  const int pos0 = is_block ? tiles.block_pos0(it) : 0;
  const int column0 = is_block ? 0 : (it - tiles.num_block_tiles) * kTile;
#pragma unroll
  for (int i = 0; i < G::kChunksPerThread; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / G::kChunksPerRow;
    const int chunk = c % G::kChunksPerRow;
    int token = token0 + r;
    bool valid = true;
    if (!is_block) {
      valid = column0 + r < tiles.num_columns;
      token = valid ? tiles.columns[column0 + r] : 0;
    }
    const int64_t offset = token * token_stride + chunk * 8;
    cp_async_16(k_dst + r * G::kStride + chunk * 8, k_head + offset, valid);
    cp_async_16(v_dst + r * G::kStride + chunk * 8, v_head + offset, valid);
    if (chunk == 0) {
      int pos = pos0 + r;
      if (!is_block) {
        pos = valid ? tiles.k_block_ids[token / tiles.block_size] * tiles.block_size +
                          token % tiles.block_size
                    : INT_MAX;
      }
      kpos_dst[r] = pos;
      ktok_dst[r] = valid ? token : -1;
    }
  }
}

}  // namespace sparsering::kernels

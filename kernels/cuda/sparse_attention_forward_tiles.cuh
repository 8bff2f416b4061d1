// The kv-tile walk of the forward kernels (sparse_attention_forward.cu and
// sparse_attention_forward_wgmma.cuh): which kv tiles a query tile visits and where their keys
// live.
#pragma once

#include <cstdint>

#include "sparse_attention_cuda.h"
#include "sparse_index_row.cuh"

namespace sparsering::kernels {

// One kv tile of a query tile's walk, resolved to where its keys live.
struct KeyTile {
  int it;      // index in the walk; >= KeyTiles::num_tiles when the walk is over
  int token0;  // block tile: local token of its first key
  int pos0;    // block tile: global position of its first key; -1 for a column chunk
};

// The kv tiles one query tile visits, in order: the kKeys-key sub-tiles of its active blocks
// (block_size / kKeys per block), then its vertical columns in chunks of kKeys. Block tiles whose
// first key lies after the tile's last query are causally empty and skipped by resolve(). Only
// offsets are kept: the index pointers are read from the kernel parameters when needed, which
// leaves the registers to the accumulators.
template <int kKeys>
struct KeyTiles {
  int block_begin;   // this row's active kv blocks: p.block_cols[block_begin ..]
  int column_begin;  // this row's vertical columns: p.column_indices[column_begin ..]
  int tiles_per_block;
  int num_block_tiles;
  int num_columns;
  int num_tiles;
  int q_last;  // global position of the query tile's last row

  // First tile >= it that may hold a visible key.
  __device__ KeyTile resolve(const SparseAttentionParams& p, int it) const {
    while (it < num_block_tiles) {
      const int block = p.block_cols[block_begin + it / tiles_per_block];
      const int offset = (it % tiles_per_block) * kKeys;
      const int pos0 = p.k_block_ids[block] * p.block_size + offset;
      if (pos0 <= q_last) return {it, block * p.block_size + offset, pos0};
      ++it;
    }
    return {it, 0, -1};
  }
};

template <int kKeys>
__device__ __forceinline__ KeyTiles<kKeys> make_key_tiles(const SparseAttentionParams& p, int b,
                                                          int h, int qb, int q_pos0, int rows) {
  const auto [block_begin, block_end, column_begin, column_end] = index_row(p, b, h, qb);
  KeyTiles<kKeys> tiles;
  tiles.block_begin = block_begin;
  tiles.column_begin = column_begin;
  tiles.tiles_per_block = p.block_size / kKeys;
  tiles.num_block_tiles = (block_end - block_begin) * tiles.tiles_per_block;
  tiles.num_columns = column_end - column_begin;
  tiles.num_tiles = tiles.num_block_tiles + (tiles.num_columns + kKeys - 1) / kKeys;
  tiles.q_last = q_pos0 + rows - 1;
  return tiles;
}

}  // namespace sparsering::kernels

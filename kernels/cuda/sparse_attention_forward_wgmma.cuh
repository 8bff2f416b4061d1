// The forward (see sparse_attention_forward.cu) on Hopper's warpgroup MMA, for head dim D = 64 or
// 128 and blocks of B = 64 or 128 tokens, with or without document masking: the same walk
// (KeyTiles: active blocks, then gathered vertical columns) and online softmax, with B-key tiles
// and each product one wgmma chain:
//   S = Q K^T   (m64nB, A = Q and B = K, both K-major from 128-byte-swizzled shared memory;
//                D / 16 k-steps)
//   O += P V    (m64nD, A = P from registers, B = V read N-major; B / 16 k-steps)
// One CTA per query block of B rows, one warpgroup per 64 rows. Every tile the walk visits meets
// every warpgroup's rows: resolve() drops block tiles starting after the query block's last row,
// and block starts are multiples of B like the query block's, so a kept block starts at or before
// the first row of every warpgroup; column chunks are never skipped. So no wgmma sits in a branch
// (ptxas serializes wgmma in branches it cannot prove warp-uniform).
// Document masking (kDocumentMask, p.q_key_start set) adds the second half of the one masking rule
// (device_mask.cuh) to the same elementwise pass: keys before a row's document start are hidden.
// Each thread keeps its two rows' key starts in registers. Tiles are not skipped for documents: the
// index already drops a query block's kv blocks that lie before all its rows' documents, and a
// tile hidden from some rows only is masked like a causal diagonal tile.
// sparse_attention_forward.cu launches it.
#pragma once

#include <cfloat>
#include <climits>
#include <cstdint>

#include "device_constants.cuh"
#include "device_convert.cuh"
#include "device_mask.cuh"
#include "device_ptx.cuh"
#include "sparse_attention_cuda.h"
#include "sparse_attention_forward_tiles.cuh"
#include "wgmma.cuh"

namespace sparsering::kernels {

// Tile shape of one instantiation: head dim kHeadDim, kBlock-token blocks.
template <int kHeadDimT, int kBlockT>
struct FwdWgmmaShape {
  static constexpr int kHeadDim = kHeadDimT;
  static constexpr int kRows = kBlockT;              // query rows per CTA: one query block
  static constexpr int kKeys = kBlockT;              // keys per kv tile
  static constexpr int kThreads = kRows / 64 * 128;  // one warpgroup per 64 rows
  static constexpr int kStages = 3;
  // A swizzled tile of kRows (= kKeys) rows x kHeadDim elements: kHeadDim / 64 panels of 64
  // columns, 128 bytes per row.
  static constexpr int kPanelBytes = kRows * 128;
  static constexpr int kTileBytes = kHeadDim / 64 * kPanelBytes;
  static constexpr int kRowChunks = kHeadDim / 8;  // 16-byte chunks of one row
  static constexpr int kScoreTiles = kKeys / 8;    // n-tiles of S
  static constexpr int kOutTiles = kHeadDim / 8;   // n-tiles of O
  static constexpr int kPvSteps = kKeys / 16;      // k-steps of P V
  // Q, three stages of K and V (226.5 KB at head dim 128 and 128-token blocks with the alignment
  // slack; sm_90 allows 227 KB), per stage the key positions of a column chunk and one metadata
  // word, and 1 KB to align the tiles to 1024 bytes.
  static constexpr int kSmemBytes =
      kTileBytes * (1 + 2 * kStages) + kStages * (kKeys + 1) * static_cast<int>(sizeof(int)) + 1024;
  static_assert(kSmemBytes <= 227 * 1024, "sm_90's shared memory per block");
  static_assert(kRows % 64 == 0 && kRows * kRowChunks % kThreads == 0,
                "whole warpgroups; tile copies split evenly over the threads");
};

// Starts copying S::kRows rows of S::kHeadDim elements into a swizzled tile (cp.async over the
// CTA's threads, not committed): row r comes from src + row_offset(r).
template <class S, typename Element, typename RowOffset>
__device__ __forceinline__ void load_swizzled_tile(const Element* src, RowOffset row_offset,
                                                   unsigned char* dst) {
  constexpr int kChunks = S::kRowChunks;
#pragma unroll
  for (int i = 0; i < S::kRows * kChunks / S::kThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * S::kThreads;
    const int r = c / kChunks;
    const int chunk = c % kChunks;
    cp_async_16(dst + (chunk / 8) * S::kPanelBytes + wgmma::swizzled_offset(r, chunk % 8),
                src + row_offset(r) + chunk * 8, true);
  }
}

// Copies kv tile `tile` into one stage, as load_key_tile does for the padded layout: a column
// chunk gathers its keys (padding rows zero-filled, position INT_MAX) and records their global
// positions in kpos_dst; meta_dst receives tile.pos0 (-1 marks a column chunk).
template <typename Element, class S>
__device__ __forceinline__ void load_key_tile_swizzled(const SparseAttentionParams& p,
                                                       const KeyTiles<S::kKeys>& tiles,
                                                       const KeyTile& tile, int64_t kv_offset,
                                                       unsigned char* k_dst, unsigned char* v_dst,
                                                       int* kpos_dst, int* meta_dst) {
  const Element* k_head = static_cast<const Element*>(p.k) + kv_offset;
  const Element* v_head = static_cast<const Element*>(p.v) + kv_offset;
  constexpr int kChunks = S::kRowChunks;
  const int64_t token_stride = static_cast<int64_t>(p.num_kv_heads) * S::kHeadDim;
  const bool is_block = tile.pos0 >= 0;
  const int column0 = is_block ? 0 : (tile.it - tiles.num_block_tiles) * S::kKeys;
#pragma unroll
  for (int i = 0; i < S::kKeys * kChunks / S::kThreads; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * S::kThreads;
    const int r = c / kChunks;
    const int chunk = c % kChunks;
    int token = tile.token0 + r;
    bool valid = true;
    if (!is_block) {
      valid = column0 + r < tiles.num_columns;
      token = valid ? p.column_indices[tiles.column_begin + column0 + r] : 0;
      if (chunk == 0) {
        kpos_dst[r] =
            valid ? p.k_block_ids[token / p.block_size] * p.block_size + token % p.block_size
                  : INT_MAX;
      }
    }
    const int64_t offset = token * token_stride + chunk * 8;
    const int to = (chunk / 8) * S::kPanelBytes + wgmma::swizzled_offset(r, chunk % 8);
    cp_async_16(k_dst + to, k_head + offset, valid);
    cp_async_16(v_dst + to, v_head + offset, valid);
  }
  if (threadIdx.x == 0) *meta_dst = tile.pos0;
}

// Grid (q_tokens / S::kRows, num_heads, batch), S::kThreads threads. Accumulator notation of
// wgmma.m64nN: warp w of a warpgroup holds rows 16 w + g and 16 w + g + 8 (lane = 4 g + t),
// d[n][0..1] and d[n][2..3] at columns 8 n + 2 t, + 1 of those rows.
template <typename Element, class S, bool kDocumentMask>
__global__ void __launch_bounds__(S::kThreads, 1)
    sparse_attention_forward_wgmma_kernel(const __grid_constant__ SparseAttentionParams p) {
  constexpr int kHeadDim = S::kHeadDim;
  constexpr int kTileBytes = S::kTileBytes;
  constexpr int kChunks = S::kRowChunks;
  constexpr int kOutTiles = S::kOutTiles;
  constexpr int kScoreTiles = S::kScoreTiles;
  constexpr int kStages = S::kStages;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // wgmma's 128-byte swizzle repeats every 1024 bytes: start every tile on such a boundary.
  unsigned char* smem = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);
  unsigned char* q_s = smem;
  unsigned char* k_s = q_s + kTileBytes;            // stages
  unsigned char* v_s = k_s + kStages * kTileBytes;  // stages
  int* kpos_s = reinterpret_cast<int*>(v_s + kStages * kTileBytes);
  int* meta_s = kpos_s + kStages * S::kKeys;

  const int warpgroup = static_cast<int>(threadIdx.x) / 128;
  const int warp = (static_cast<int>(threadIdx.x) % 128) / 32;  // within the warpgroup
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  // Heavy (late) causal tiles first, so that the short ones fill the tail of the grid.
  const int qb = static_cast<int>(gridDim.x - 1 - blockIdx.x);  // one query block per CTA
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q_token0 = qb * S::kRows;
  const int q_pos0 = p.q_block_ids[qb] * p.block_size;
  const int kvh = h / (p.num_heads / p.num_kv_heads);  // GQA
  const KeyTiles<S::kKeys> tiles = make_key_tiles<S::kKeys>(p, b, h, qb, q_pos0, S::kRows);

  const int64_t q_token_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const int64_t kv_token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const Element* q_g = static_cast<const Element*>(p.q) +
                       (static_cast<int64_t>(b) * p.q_tokens + q_token0) * q_token_stride +
                       h * kHeadDim;
  const int64_t kv_offset = static_cast<int64_t>(b) * p.k_tokens * kv_token_stride + kvh * kHeadDim;

  // Prologue: Q (group 0) and the first kv tile (group 1, possibly empty).
  load_swizzled_tile<S>(
      q_g, [&](int r) { return r * q_token_stride; }, q_s);
  cp_async_commit();
  KeyTile pending = tiles.resolve(p, 0);  // next tile to copy
  int issued = 0;
  if (pending.it < tiles.num_tiles) {
    load_key_tile_swizzled<Element, S>(p, tiles, pending, kv_offset, k_s, v_s, kpos_s, meta_s);
    ++issued;
    pending = tiles.resolve(p, pending.it + 1);
  }
  cp_async_commit();
  cp_async_wait<1>();
  // A negative scale is folded into Q (negation is exact), as in the mma.sync kernel; each thread
  // flips the chunks it copied itself.
  if (p.softmax_scale < 0.f) {
#pragma unroll
    for (int i = 0; i < S::kRows * kChunks / S::kThreads; ++i) {
      const int c = static_cast<int>(threadIdx.x) + i * S::kThreads;
      uint4* chunk = reinterpret_cast<uint4*>(q_s + (c % kChunks / 8) * S::kPanelBytes +
                                              wgmma::swizzled_offset(c / kChunks, c % 8));
      uint4 x = *chunk;
      x.x ^= 0x80008000u;
      x.y ^= 0x80008000u;
      x.z ^= 0x80008000u;
      x.w ^= 0x80008000u;
      *chunk = x;
    }
  }

  float o[kOutTiles][4];
#pragma unroll
  for (int n = 0; n < kOutTiles; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.f;
  }
  // Running max (log2 units) and this thread's partial sums of rows g and g + 8.
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};
  // Positive (see the negation above); at least FLT_MIN so that a zero scale still turns masked
  // scores (-inf) into -inf instead of NaN.
  const float scale_log2 = fmaxf(fabsf(p.softmax_scale) * kLog2e, FLT_MIN);
  const int wg_q0 = q_pos0 + 64 * warpgroup;  // global position of the warpgroup's first row
  const int row_q = wg_q0 + 16 * warp + g;    // and of this thread's first row
  // Document masking: the first visible key of each of the thread's two rows, and the largest
  // over the warp (a block tile starting at or after it hides no key from the warp's rows).
  int key_start[2] = {0, 0};
  int warp_key_start_max = 0;
  if constexpr (kDocumentMask) {
    const int32_t* starts = p.q_key_start + static_cast<int64_t>(b) * p.q_tokens + q_token0 +
                            64 * warpgroup + 16 * warp + g;
    key_start[0] = starts[0];
    key_start[1] = starts[8];
    warp_key_start_max = __reduce_max_sync(kFullMask, max(key_start[0], key_start[1]));
  }
  const uint32_t q_addr = smem_address(q_s) + 64 * warpgroup * 128;

  // Software pipeline (FlashAttention-3's intra-warpgroup overlap): O += P V of a warpgroup's
  // previous tile is issued right behind the current tile's S = Q K^T and runs while the softmax
  // exponentiates; only the O rescale and the packing of P wait for it. Three K/V stages: tile
  // i - 1 (its P V still in flight during tile i), tile i, and tile i + 1 streaming in. Every
  // warpgroup finishes the P V of tile i - 1 within tile i, before the barrier of tile i + 1,
  // after which tile i - 1's stage is refilled.
  uint32_t p_frag[S::kPvSteps][4];  // P of the previous tile, the A fragments of its P V
  uint32_t pv_v_addr = 0;           // V of that tile
  auto issue_pv = [&]() {
    wgmma::fence();  // p_frag and the rescaled o were written by ordinary instructions
#pragma unroll
    for (int kk = 0; kk < S::kPvSteps; ++kk) {
      const uint64_t v_desc = wgmma::descriptor(pv_v_addr + kk * 2048, S::kPanelBytes, 1024);
      wgmma::mma_rs<Element, 1>(o, p_frag[kk], v_desc, 1);
    }
    wgmma::commit_group();
  };
  int stage = 0;
  for (int i = 0; i < issued; ++i) {
    cp_async_wait<0>();          // tile i (the only group in flight)
    wgmma::fence_proxy_async();  // the landed tiles (and a flipped Q) are read by wgmma
    __syncthreads();             // and every warpgroup is done with tile i - 2's stage

    const bool refill = pending.it < tiles.num_tiles;
    if (refill) {
      const int s = stage == kStages - 1 ? 0 : stage + 1;  // tile i - 2's
      load_key_tile_swizzled<Element, S>(p, tiles, pending, kv_offset, k_s + s * kTileBytes,
                                         v_s + s * kTileBytes, kpos_s + s * S::kKeys, meta_s + s);
      ++issued;
    }
    cp_async_commit();  // possibly empty

    const int pos0 = meta_s[stage];
    const bool is_column = pos0 < 0;
    // Mask a block tile that reaches past this warpgroup's first row (or, with documents, starts
    // before some key start of the warp's rows); column chunks always (arbitrary positions,
    // padding).
    const bool mask =
        is_column || pos0 + S::kKeys - 1 > wg_q0 || (kDocumentMask && pos0 < warp_key_start_max);
    const uint32_t k_addr = smem_address(k_s + stage * kTileBytes);
    float s[kScoreTiles][4];
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint32_t step = (kk / 4) * S::kPanelBytes + (kk % 4) * 32;
      const uint64_t q_desc = wgmma::descriptor(q_addr + step, 16, 1024);
      const uint64_t k_desc = wgmma::descriptor(k_addr + step, 16, 1024);
      wgmma::mma_ss<Element, 0, 0>(s, q_desc, k_desc, kk);
    }
    wgmma::commit_group();
    if (i > 0) {
      issue_pv();
      wgmma::wait_group<1>();  // S (the older group)
    } else {
      wgmma::wait_group<0>();
    }
    wgmma::fence_operands(s);

    // The masking rule (causal kpos > qpos, and kpos < the row's key start with documents) on the
    // raw scores (the scale is applied in the exponent).
    if (mask) {
      const int* kpos = kpos_s + stage * S::kKeys;
#pragma unroll
      for (int n = 0; n < kScoreTiles; ++n) {
        int key[2];
        if (is_column) {
          const int2 k2 = *reinterpret_cast<const int2*>(kpos + n * 8 + 2 * t);
          key[0] = k2.x;
          key[1] = k2.y;
        } else {
          key[0] = pos0 + n * 8 + 2 * t;
          key[1] = key[0] + 1;
        }
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (key_hidden<kDocumentMask>(key[e & 1], row_q + (e >> 1) * 8, key_start[e >> 1])) {
            s[n][e] = -INFINITY;
          }
        }
      }
    }

    // Online softmax in log2 units, as in the mma.sync kernel; P stays in s (fp32) until the
    // previous P V no longer reads p_frag.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kScoreTiles; ++n) {
      tile_max[0] = fmaxf(tile_max[0], fmaxf(s[n][0], s[n][1]));
      tile_max[1] = fmaxf(tile_max[1], fmaxf(s[n][2], s[n][3]));
    }
    float neg_base[2];
    float correction[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(kFullMask, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(kFullMask, tile_max[r], 2));
      const float new_max = fmaxf(row_max[r], tile_max[r] * scale_log2);
      const float base = new_max == -INFINITY ? 0.f : new_max;
      correction[r] = exp2f(row_max[r] - base);
      neg_base[r] = -base;
      row_max[r] = new_max;
      row_sum[r] *= correction[r];
    }
#pragma unroll
    for (int n = 0; n < kScoreTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(fmaf(s[n][e], scale_log2, neg_base[e >> 1]));
        row_sum[e >> 1] += s[n][e];
      }
    }
    wgmma::wait_group<0>();  // the previous P V
    wgmma::fence_operands(o);
    // One loop over the O and the S n-tiles (16 each at head dim 128 with 128-token blocks).
    constexpr int kTiles = kOutTiles > kScoreTiles ? kOutTiles : kScoreTiles;
#pragma unroll
    for (int n = 0; n < kTiles; ++n) {
      if (n < kOutTiles) {
        o[n][0] *= correction[0];
        o[n][1] *= correction[0];
        o[n][2] *= correction[1];
        o[n][3] *= correction[1];
      }
      if (n < kScoreTiles) {
        // n-tiles 2j, 2j + 1 are k-step j (keys 16 j .. +15) of P V.
        p_frag[n / 2][2 * (n % 2)] = pack2<Element>(s[n][0], s[n][1]);
        p_frag[n / 2][2 * (n % 2) + 1] = pack2<Element>(s[n][2], s[n][3]);
      }
    }
    pv_v_addr = smem_address(v_s + stage * kTileBytes);
    // Resolve the tile after the one just issued, off the critical path of the copy.
    if (refill) pending = tiles.resolve(p, pending.it + 1);
    stage = stage == kStages - 1 ? 0 : stage + 1;
  }
  if (issued > 0) {
    issue_pv();
    wgmma::wait_group<0>();
    wgmma::fence_operands(o);
  }
  cp_async_wait<0>();

  // Epilogue: O / l and lse = max ln 2 + ln l; empty rows get O = 0, lse = -inf. Rows row_q and
  // row_q + 8 are tokens q_token0 + 64 w + 16 warp + g (+8).
  const int row_token = q_token0 + 64 * warpgroup + 16 * warp + g;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = row_sum[r];
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    sum += __shfl_xor_sync(kFullMask, sum, 2);
    const bool empty = row_max[r] == -INFINITY;
    const float inv_sum = empty ? 0.f : 1.f / sum;
    Element* out_row = static_cast<Element*>(p.out) +
                       (static_cast<int64_t>(b) * p.q_tokens + row_token + 8 * r) * q_token_stride +
                       h * kHeadDim + 2 * t;
#pragma unroll
    for (int n = 0; n < kOutTiles; ++n) {
      *reinterpret_cast<uint32_t*>(out_row + 8 * n) =
          pack2<Element>(o[n][2 * r] * inv_sum, o[n][2 * r + 1] * inv_sum);
    }
    if (t == 0) {
      p.lse[(static_cast<int64_t>(b) * p.num_heads + h) * p.q_tokens + row_token + 8 * r] =
          empty ? -INFINITY : row_max[r] * kLn2 + logf(sum);
    }
  }
}

}  // namespace sparsering::kernels

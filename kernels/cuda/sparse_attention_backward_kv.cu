// The backward's non-deterministic per-kv-block kernel (see sparse_attention_backward.cu for the
// three schedules): FlashAttention-2's schedule over the active blocks, dK/dV in registers and
// each query tile's dQ partial added into dq with atomics. 128-key blocks (head dim 64 or 128) run
// the wgmma kernel of sparse_attention_backward_wgmma.cuh instead.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "device_atomics.cuh"
#include "device_constants.cuh"
#include "device_convert.cuh"
#include "device_mask.cuh"
#include "device_ptx.cuh"
#include "sparse_attention_backward_kv_major.cuh"
#include "sparse_attention_backward_launch.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_backward_wgmma.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {
namespace {

// Adds scale * acc (a warp's 16 x 8 kDqTiles mma accumulator: rows `rows`, rows + 8 of a
// [token][head][d] fp32 tensor, 16-byte aligned) with one 16-byte atomic per 4 values.
template <int kDqTiles>
__device__ __forceinline__ void atomic_add_rows4(float* rows, int64_t token_stride,
                                                 const float (&acc)[kDqTiles][4], float scale,
                                                 int g, int t) {
  const bool odd = (t & 1) != 0;
  float* dst = rows + (g + (odd ? 8 : 0)) * token_stride + 2 * (t & ~1);
#pragma unroll
  for (int dn = 0; dn < kDqTiles; ++dn) atomic_add4(dst + dn * 8, pair_rows4(acc[dn], odd, scale));
}

// Row stride (elements) of the per-kv-block kernel's P and dS tiles, [query][key]: 16 bytes of
// padding per row put the 8 rows of a warp's packed stores and of an ldmatrix into distinct banks.
template <int kKeys>
constexpr int score_stride() {
  return kKeys + 8;
}

// Query-tile buffers of the per-kv-block kernel: two (the next tile streams in during the current
// one), or one where two would leave room for only one CTA per SM (head dim 128 with 64-key
// blocks: 123 KB of shared memory, 4 warps per SM), so that two CTAs overlap each other instead.
template <int kHeadDim, int kKeys>
constexpr int kv_query_stages() {
  return kHeadDim == 128 && kKeys == 64 ? 1 : 2;
}

// acc = A B^T for one warp's 32 x 32 tile, over the head dimension: A rows 32 wm .. +31 of
// a_tile and B rows 32 wn .. +31 of b_tile, both [row][d] with the query-tile stride, B being
// the mma's "col" operand. S = Q K^T and dP = dO V^T of the per-kv-block kernel.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void warp_tile_rows_by_rows(float (&acc)[2][4][4], const Element* a_tile,
                                                       const Element* b_tile, int wm, int wn,
                                                       int lane) {
  using G = TileGeometry<kHeadDim>;
  const int a_row = lane % 16;
  const int a_col = (lane / 16) * 8;
  const int b_row = (lane / 16) * 8 + lane % 8;
  const int b_col = ((lane / 8) % 2) * 8;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
    }
  }
#pragma unroll
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t a[2][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
      ldmatrix_x4(a[mi], a_tile + (32 * wm + 16 * mi + a_row) * G::kStride + kk * 16 + a_col);
    }
#pragma unroll
    for (int np = 0; np < 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, b_tile + (32 * wn + 16 * np + b_row) * G::kStride + kk * 16 + b_col);
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        mma_16816<Element>(acc[mi][2 * np], a[mi], b[0], b[1]);
        mma_16816<Element>(acc[mi][2 * np + 1], a[mi], b[2], b[3]);
      }
    }
  }
}

// dK, dV += the contributions of the query tiles of `tiles` to a kv tile of kKeys keys (active
// blocks only: no column masks), and each tile's dQ partial, scale dS K, added into bp.dq with
// atomics. FlashAttention-2's warp layout: kKeys / 16 warps as 2 x (kKeys / 32); warp (wm, wn)
//   - forms S = Q K^T and dP = dO V^T for queries 32 wm .. +31 and keys 32 wn .. +31, then P and
//     dS, staged in shared memory [query][key];
//   - accumulates dV = P^T dO and dK = dS^T Q for keys 32 wn .. +31 and head-dim half wm;
//   - forms dQ = dS K for queries 32 wm .. +31 and head-dim span wn.
// Every operand tile a warp reads is 32 rows deep, so each shared-memory fragment feeds two mma
// rows of tiles: this reads ~30% fewer shared-memory bytes per pair than 16-key warps that keep
// P^T in registers (the backward is bound by shared-memory bandwidth). K and V must be in shared
// memory (or in flight in an older cp.async group) before the call; returns with this thread's
// copies complete and all warps past their last read of the query buffers.
template <typename Element, int kHeadDim, int kKeys, bool kDocumentMask>
__device__ __forceinline__ void accumulate_block_gradients(const QueryTiles& tiles,
                                                           const SparseAttentionBackwardParams& bp,
                                                           int b,
                                                           const DkdvSmem<Element, kHeadDim>& sm,
                                                           float (&dk)[2][kHeadDim / 16][4],
                                                           float (&dv)[2][kHeadDim / 16][4]) {
  using G = TileGeometry<kHeadDim>;
  constexpr int kNumWarps = kKeys / 16;
  constexpr int kNumThreads = kNumWarps * 32;
  static_assert(kKeys == 64 || kKeys == 128, "kv tiles of 64 or 128 keys");
  constexpr int kSStride = score_stride<kKeys>();
  constexpr int kQueryStages = kv_query_stages<kHeadDim, kKeys>();
  constexpr int kHalfDim = kHeadDim / 2;                // dK/dV columns per warp
  constexpr int kDqSpan = kHeadDim / (kNumWarps / 2);   // dQ columns per warp
  constexpr int kDqCols = kDqSpan < 32 ? kDqSpan : 32;  // per pass: bounds the accumulators
  constexpr int kDqTiles = kDqCols / 8;
  static_assert(kDqTiles % 2 == 0, "dQ passes of whole 16-column ldmatrix loads");
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int wm = warp % 2;
  const int wn = warp / 2;
  const float scale_log2 = bp.forward.softmax_scale * kLog2e;
  const SparseAttentionParams& p = bp.forward;
  const int64_t q_token_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  // Fragment addresses that do not depend on the tile: A rows (non-transposed ldmatrix) and the
  // rows of a transposed ldmatrix over a [k][n] tile.
  const int a_row = lane % 16;
  const int a_col = (lane / 16) * 8;
  const int bt_row = lane % 8 + ((lane / 8) % 2) * 8;
  const int bt_col = (lane / 16) * 8;
  const int b_row = (lane / 16) * 8 + lane % 8;
  const int b_col = ((lane / 8) % 2) * 8;

  // Every entry of the transposed block index is a causal (query block, kv block) pair and the kv
  // tile is a whole block, so no query tile is causally empty (next() would skip none; an empty
  // one would only be masked to zero): the tiles run in order, and the index lookups of tile
  // it + 2 (two dependent global loads) are issued during tile it, off the critical path, and
  // handed over in sm.tile_ring (tile j in slot j % 3: tiles it and it + 1 are read during
  // tile it while slot (it + 2) % 3 is written, after its previous tile's last read).
  if (tiles.num_tiles == 0) return;  // CTA-uniform
  if (threadIdx.x == 0) {
    sm.tile_ring[0] = tiles.tile(0);
    if (tiles.num_tiles > 1) sm.tile_ring[1] = tiles.tile(1);
  }
  __syncthreads();
  if constexpr (kQueryStages == 2) {
    load_query_tile<Element, kHeadDim, kNumThreads, kDocumentMask>(
        sm.tile_ring[0], bp, b, sm.q, sm.dout, sm.lse, sm.delta, sm.key_start);
    cp_async_commit();
  }

  int stage = 0;
  for (int it = 0; it < tiles.num_tiles; ++it) {
    // Double-buffered: the next tile streams into the other buffer during this one. Single:
    // this tile is loaded now (the previous one is consumed: end-of-iteration barrier).
    const int fill = kQueryStages == 2 ? it + 1 : it;
    const int fill_stage = kQueryStages == 2 ? stage ^ 1 : 0;
    if (fill < tiles.num_tiles) {
      load_query_tile<Element, kHeadDim, kNumThreads, kDocumentMask>(
          sm.tile_ring[fill % 3], bp, b, sm.q + fill_stage * G::kElems,
          sm.dout + fill_stage * G::kElems, sm.lse + fill_stage * kTile,
          sm.delta + fill_stage * kTile,
          kDocumentMask ? sm.key_start + fill_stage * kTile : nullptr);
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform for the wait
    const bool prefetch = threadIdx.x == 0 && it + 2 < tiles.num_tiles;
    QueryTile later{};
    if (prefetch) later = tiles.tile(it + 2);
    cp_async_wait<kQueryStages - 1>();
    __syncthreads();

    const Element* q_tile = sm.q + stage * G::kElems;
    const Element* do_tile = sm.dout + stage * G::kElems;
    const QueryTile& current = sm.tile_ring[it % 3];
    const bool mask = tiles.k_pos_last > current.pos0;  // the tile meets the causal diagonal
    const int q_pos0 = current.pos0;

    float s[2][4][4];
    float dp[2][4][4];
    warp_tile_rows_by_rows<Element, kHeadDim>(s, q_tile, sm.k, wm, wn, lane);    // S = Q K^T
    warp_tile_rows_by_rows<Element, kHeadDim>(dp, do_tile, sm.v, wm, wn, lane);  // dP = dO V^T

    // P = exp(scale S - lse) (0 where masked or lse = -inf), dS = P (dP - delta), staged
    // [query][key] with packed stores. Accumulator rows: query 32 wm + 16 mi + g (+8 for e >= 2),
    // columns: key 32 wn + 8 ni + 2t (+1 for odd e).
    const float* lse_tile = sm.lse + stage * kTile;
    const float* delta_tile = sm.delta + stage * kTile;
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int query = 32 * wm + 16 * mi + g + 8 * h;
        const float lse = lse_tile[query];
        const float lse2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
        const float delta = delta_tile[query];
        const int q_pos = q_pos0 + query;
        int key_start = 0;
        if constexpr (kDocumentMask) key_start = sm.key_start[stage * kTile + query];
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int e = 2 * h + c;
            const int key_pos = tiles.k_pos0 + 32 * wn + 8 * ni + 2 * t + c;
            bool masked;
            if constexpr (kDocumentMask) {
              masked = key_hidden<true>(key_pos, q_pos, key_start);
            } else {
              masked = mask && key_hidden<false>(key_pos, q_pos, 0);
            }
            const float prob = masked ? 0.f : exp2f(s[mi][ni][e] * scale_log2 - lse2);
            s[mi][ni][e] = prob;
            dp[mi][ni][e] = prob * (dp[mi][ni][e] - delta);
          }
        }
      }
#pragma unroll
      for (int ni = 0; ni < 4; ++ni) {
        const int offset = (32 * wm + 16 * mi + g) * kSStride + 32 * wn + 8 * ni + 2 * t;
        *reinterpret_cast<uint32_t*>(sm.p + offset) = pack2<Element>(s[mi][ni][0], s[mi][ni][1]);
        *reinterpret_cast<uint32_t*>(sm.p + offset + 8 * kSStride) =
            pack2<Element>(s[mi][ni][2], s[mi][ni][3]);
        *reinterpret_cast<uint32_t*>(sm.ds + offset) = pack2<Element>(dp[mi][ni][0], dp[mi][ni][1]);
        *reinterpret_cast<uint32_t*>(sm.ds + offset + 8 * kSStride) =
            pack2<Element>(dp[mi][ni][2], dp[mi][ni][3]);
      }
    }
    __syncthreads();  // P and dS of all warps are in shared memory

    // dV += P^T dO, dK += dS^T Q over the tile's 64 queries. A = P^T / dS^T [key][query] from the
    // [query][key] tiles, B = dO / Q [query][d] = [k][n]: both by transposed ldmatrix.
#pragma unroll
    for (int j = 0; j < kTile / 16; ++j) {
      uint32_t pa[2][4];
      uint32_t sa[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int offset = (16 * j + b_row) * kSStride + 32 * wn + 16 * mi + b_col;
        ldmatrix_x4_trans(pa[mi], sm.p + offset);
        ldmatrix_x4_trans(sa[mi], sm.ds + offset);
      }
#pragma unroll
      for (int dp2 = 0; dp2 < kHalfDim / 16; ++dp2) {
        const int offset = (16 * j + bt_row) * G::kStride + wm * kHalfDim + 16 * dp2 + bt_col;
        uint32_t db[4];
        uint32_t qb[4];
        ldmatrix_x4_trans(db, do_tile + offset);
        ldmatrix_x4_trans(qb, q_tile + offset);
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          mma_16816<Element>(dv[mi][2 * dp2], pa[mi], db[0], db[1]);
          mma_16816<Element>(dv[mi][2 * dp2 + 1], pa[mi], db[2], db[3]);
          mma_16816<Element>(dk[mi][2 * dp2], sa[mi], qb[0], qb[1]);
          mma_16816<Element>(dk[mi][2 * dp2 + 1], sa[mi], qb[2], qb[3]);
        }
      }
    }

    // dQ = dS K over the kv tile's keys, kDqCols columns per pass: A = dS [query][key] directly,
    // B = K [key][d] = [k][n] by transposed ldmatrix.
    float* dq_rows =
        bp.dq + (static_cast<int64_t>(b) * p.q_tokens + current.token0 + 32 * wm) * q_token_stride +
        current.head * kHeadDim;
#pragma unroll
    for (int d0 = wn * kDqSpan; d0 < (wn + 1) * kDqSpan; d0 += kDqCols) {
      float acc[2][kDqTiles][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
        for (int dn = 0; dn < kDqTiles; ++dn) {
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[mi][dn][e] = 0.f;
        }
      }
#pragma unroll
      for (int j = 0; j < kKeys / 16; ++j) {
        uint32_t a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          ldmatrix_x4(a[mi], sm.ds + (32 * wm + 16 * mi + a_row) * kSStride + 16 * j + a_col);
        }
#pragma unroll
        for (int dp2 = 0; dp2 < kDqTiles / 2; ++dp2) {
          uint32_t kb[4];
          ldmatrix_x4_trans(kb, sm.k + (16 * j + bt_row) * G::kStride + d0 + 16 * dp2 + bt_col);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi) {
            mma_16816<Element>(acc[mi][2 * dp2], a[mi], kb[0], kb[1]);
            mma_16816<Element>(acc[mi][2 * dp2 + 1], a[mi], kb[2], kb[3]);
          }
        }
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        atomic_add_rows4<kDqTiles>(dq_rows + 16 * mi * q_token_stride + d0, q_token_stride, acc[mi],
                                   p.softmax_scale, g, t);
      }
    }

    if (prefetch) sm.tile_ring[(it + 2) % 3] = later;
    // Every warp is done with this stage and with P / dS before they are refilled.
    __syncthreads();
    stage = (stage + 1) % kQueryStages;
  }
  cp_async_wait<0>();
}

template <typename Element, int kHeadDim, int kKeys, bool kDocumentMask>
constexpr int kv_smem_bytes() {
  // K, V (kKeys rows each), stages x (Q, dO), P and dS, stages x kTile lse and delta values [and
  // key starts], the prefetched query tiles.
  using G = TileGeometry<kHeadDim>;
  constexpr int kQueryStages = kv_query_stages<kHeadDim, kKeys>();
  return (2 * kKeys * G::kStride + 2 * kQueryStages * G::kElems +
          2 * kTile * score_stride<kKeys>()) *
             static_cast<int>(sizeof(Element)) +
         (kDocumentMask ? 3 : 2) * kQueryStages * kTile * static_cast<int>(sizeof(float)) +
         3 * static_cast<int>(sizeof(QueryTile));
}

// Non-deterministic dK/dV/dQ of the active blocks, FlashAttention-2's schedule: one CTA per kKeys
// keys (kKeys divides block_size) and kv head, kKeys / 16 warps. Grid (k_tokens / kKeys,
// num_kv_heads, batch). Walks the transposed block index like the deterministic kernel, forms the
// products of accumulate_block_gradients, adds each query tile's dQ partial into dq with atomics
// and writes dK/dV once at the end. Vertical columns are not visited here. Keys ascend with
// blockIdx.x, so under a causal pattern the largest kv tiles (most query tiles) are scheduled first
// and the short ones fill the tail.
template <typename Element, int kHeadDim, int kKeys, bool kDocumentMask>
__global__ void __launch_bounds__(2 * kKeys, 1)
    sparse_attention_backward_kv_kernel(const __grid_constant__ SparseAttentionBackwardParams bp) {
  using G = TileGeometry<kHeadDim>;
  constexpr int kNumThreads = 2 * kKeys;
  const SparseAttentionParams& p = bp.forward;

  extern __shared__ __align__(16) unsigned char smem[];
  DkdvSmem<Element, kHeadDim> sm;
  sm.k = reinterpret_cast<Element*>(smem);
  sm.v = sm.k + kKeys * G::kStride;
  sm.q = sm.v + kKeys * G::kStride;
  constexpr int kQueryStages = kv_query_stages<kHeadDim, kKeys>();
  sm.dout = sm.q + kQueryStages * G::kElems;
  sm.ds = sm.dout + kQueryStages * G::kElems;
  sm.p = sm.ds + kTile * score_stride<kKeys>();
  sm.lse = reinterpret_cast<float*>(sm.p + kTile * score_stride<kKeys>());
  sm.delta = sm.lse + kQueryStages * kTile;
  sm.key_start =
      kDocumentMask ? reinterpret_cast<int32_t*>(sm.delta + kQueryStages * kTile) : nullptr;
  sm.key_masks = nullptr;
  sm.entries = nullptr;
  sm.misc = nullptr;
  sm.tile_ring =
      reinterpret_cast<QueryTile*>(sm.delta + (kDocumentMask ? 2 : 1) * kQueryStages * kTile);

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int k_tile = blockIdx.x;
  const int kvh = blockIdx.y;
  const int b = blockIdx.z;
  const QueryTiles tiles = transposed_block_tiles<kKeys>(bp, k_tile, kvh, b);
  if (tiles.num_tiles == 0) return;  // no query tile meets this kv tile (CTA-uniform)

  const int64_t kv_token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const int64_t kv_offset = kv_tile_offset<kHeadDim, kKeys>(p, kv_token_stride, k_tile, kvh, b);
  // K and V stay resident; their copy group completes inside the first query-tile wait.
  load_kv_tile<Element, kHeadDim, kKeys, kNumThreads>(p, kv_offset, sm.k, sm.v);

  float dk[2][kHeadDim / 16][4];
  float dv[2][kHeadDim / 16][4];
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int dn = 0; dn < kHeadDim / 16; ++dn) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        dk[mi][dn][e] = 0.f;
        dv[mi][dn][e] = 0.f;
      }
    }
  }
  accumulate_block_gradients<Element, kHeadDim, kKeys, kDocumentMask>(tiles, bp, b, sm, dk, dv);

  // Warp (wm, wn) = (w % 2, w / 2) holds keys 32 wn + 16 mi + g (+8) and columns
  // wm kHeadDim / 2 + 8 dn + 2t. This CTA alone owns these dk/dv rows within this kernel (the
  // column pass adds to them later, in stream order), so plain read-modify-write.
  const float scale = p.softmax_scale;
  float* dk_g = bp.dk + kv_offset;
  float* dv_g = bp.dv + kv_offset;
#pragma unroll
  for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int64_t row = (32 * (warp / 2) + 16 * mi + g + 8 * i) * kv_token_stride +
                          (warp % 2) * (kHeadDim / 2) + 2 * t;
#pragma unroll
      for (int dn = 0; dn < kHeadDim / 16; ++dn) {
        float2* dk_ptr = reinterpret_cast<float2*>(dk_g + row + dn * 8);
        float2* dv_ptr = reinterpret_cast<float2*>(dv_g + row + dn * 8);
        float2 dk_value = *dk_ptr;
        float2 dv_value = *dv_ptr;
        dk_value.x += scale * dk[mi][dn][2 * i];
        dk_value.y += scale * dk[mi][dn][2 * i + 1];
        dv_value.x += dv[mi][dn][2 * i];
        dv_value.y += dv[mi][dn][2 * i + 1];
        *dk_ptr = dk_value;
        *dv_ptr = dv_value;
      }
    }
  }
}

}  // namespace

template <typename Element, int kHeadDim, int kKeys, bool kDocumentMask>
cudaError_t launch_kv_blocks(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  const dim3 kv_grid(p.k_tokens / kKeys, p.num_kv_heads, p.batch);
  if constexpr (kKeys == kWgmmaKeys) {
    return launch(sparse_attention_backward_kv_wgmma_kernel<Element, kHeadDim, kDocumentMask>,
                  kv_grid, kv_wgmma_smem_bytes<kHeadDim, kDocumentMask>(), stream, bp,
                  kWgmmaThreads);
  } else {
    return launch(sparse_attention_backward_kv_kernel<Element, kHeadDim, kKeys, kDocumentMask>,
                  kv_grid, kv_smem_bytes<Element, kHeadDim, kKeys, kDocumentMask>(), stream, bp,
                  2 * kKeys);
  }
}

#define SPARSERING_INSTANTIATE(Element, kHeadDim, kDocumentMask)                \
  template cudaError_t launch_kv_blocks<Element, kHeadDim, 64, kDocumentMask>(  \
      const SparseAttentionBackwardParams&, cudaStream_t);                      \
  template cudaError_t launch_kv_blocks<Element, kHeadDim, 128, kDocumentMask>( \
      const SparseAttentionBackwardParams&, cudaStream_t);
SPARSERING_BACKWARD_VARIANTS(SPARSERING_INSTANTIATE)
#undef SPARSERING_INSTANTIATE

}  // namespace sparsering::kernels

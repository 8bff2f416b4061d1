// What the deterministic dK/dV kernels share (sparse_attention_backward_dkdv.cu: contiguous kv
// tiles over the active blocks; sparse_attention_backward_dkdv_columns.cu: gathered chunks of
// vertical-column keys): the shared-memory frame (with the column pass's entry window), the
// query-tile pipeline that accumulates dK/dV in registers and the final write of dK/dV.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "device_constants.cuh"
#include "device_convert.cuh"
#include "device_mask.cuh"
#include "device_ptx.cuh"
#include "sparse_attention_backward_kv_major.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {

// Entries of the transposed column index are bucketed kMaskSlots at a time.
inline constexpr int kMaskSlots = 512;

// kStages x kTile key starts of the staged query tiles, with document masking only.
template <bool kDocumentMask>
constexpr int key_start_smem_bytes() {
  return kDocumentMask ? kStages * kTile * static_cast<int>(sizeof(int32_t)) : 0;
}

template <typename Element, int kHeadDim, bool kDocumentMask>
constexpr int dkdv_smem_bytes() {
  // K, V, kStages x (Q, dO), kStages x kTile lse and delta values [and key starts], column masks
  // and entries.
  return (2 + 2 * kStages) * TileGeometry<kHeadDim>::kElems * static_cast<int>(sizeof(Element)) +
         2 * kStages * kTile * static_cast<int>(sizeof(float)) +
         key_start_smem_bytes<kDocumentMask>() +
         kMaskSlots * static_cast<int>(sizeof(uint64_t) + sizeof(int32_t)) +
         4 * static_cast<int>(sizeof(int32_t));
}

// dK, dV += contributions of the query tiles of `tiles` (see sparse_attention_backward_dkdv.cu for
// the products) for a kv tile of kTile keys (warp w owns keys 16w..16w+15), honouring the tiles'
// column key masks. key_pos holds the global positions of this thread's two accumulator rows (keys
// 16w + g and 16w + g + 8): consecutive for a contiguous kv tile, scattered for a gathered column
// chunk (INT_MAX for a padding row, which no query attends). Streams the query tiles through the
// kStages buffers; K and V must be in shared memory (or in flight in an older cp.async group)
// before the call. Returns with this thread's copies complete; when it ran tiles, all warps are
// past their last read of the query buffers, but `tiles` itself (entries, masks) may still be read
// by other warps: synchronize before rewriting it.
template <typename Element, int kHeadDim, bool kDocumentMask>
__device__ __forceinline__ void accumulate_dkdv(const QueryTiles& tiles,
                                                const SparseAttentionBackwardParams& bp, int b,
                                                const DkdvSmem<Element, kHeadDim>& sm,
                                                const int (&key_pos)[2],
                                                float (&dk)[kHeadDim / 8][4],
                                                float (&dv)[kHeadDim / 8][4]) {
  using G = TileGeometry<kHeadDim>;
  constexpr int kDSteps = kHeadDim / 16;
  // Query columns of S^T processed at once: bounds the live S^T / dP^T registers next to the
  // kHeadDim dK/dV accumulator registers per thread.
  constexpr int kQueryChunk = kHeadDim == 128 ? 32 : 64;
  constexpr int kQueryTiles = kQueryChunk / 8;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const float scale_log2 = bp.forward.softmax_scale * kLog2e;
  const int a_offset_base = (warp * 16 + lane % 16) * G::kStride + (lane / 16) * 8;

  int it = tiles.next(0);
  if (it >= tiles.num_tiles) return;  // CTA-uniform
  load_query_tile<Element, kHeadDim, kThreads, kDocumentMask>(tiles.tile(it), bp, b, sm.q, sm.dout,
                                                              sm.lse, sm.delta, sm.key_start);
  cp_async_commit();

  int stage = 0;
  while (it < tiles.num_tiles) {
    const int next = tiles.next(it + 1);
    if (next < tiles.num_tiles) {
      load_query_tile<Element, kHeadDim, kThreads, kDocumentMask>(
          tiles.tile(next), bp, b, sm.q + (stage ^ 1) * G::kElems,
          sm.dout + (stage ^ 1) * G::kElems, sm.lse + (stage ^ 1) * kTile,
          sm.delta + (stage ^ 1) * kTile,
          kDocumentMask ? sm.key_start + (stage ^ 1) * kTile : nullptr);
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform for wait<1>
    cp_async_wait<1>();
    __syncthreads();

    const Element* q_tile = sm.q + stage * G::kElems;
    const Element* do_tile = sm.dout + stage * G::kElems;
    const float* lse_tile = sm.lse + stage * kTile;
    const float* delta_tile = sm.delta + stage * kTile;
    const int32_t* key_start_tile = kDocumentMask ? sm.key_start + stage * kTile : nullptr;
    // With documents every tile is masked (below): a key start may fall anywhere in the tile.
    const bool mask = tiles.needs_mask(it);
    const int q_pos0 = tiles.pos0(it);
    // Keys of this thread's accumulator rows g and g + 8 that the tile's entry does not attend.
    const uint64_t key_mask = tiles.key_mask(it);
    const bool key_off[2] = {((key_mask >> (warp * 16 + g)) & 1) == 0,
                             ((key_mask >> (warp * 16 + g + 8)) & 1) == 0};

#pragma unroll
    for (int qc = 0; qc < kTile / kQueryChunk; ++qc) {
      // S^T = K Q^T and dP^T = V dO^T: A = this warp's K / V rows; B = Q / dO [query][d], the
      // "col" operand, by non-transposed ldmatrix.
      float st[kQueryTiles][4];
      float dpt[kQueryTiles][4];
#pragma unroll
      for (int n = 0; n < kQueryTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          st[n][e] = 0.f;
          dpt[n][e] = 0.f;
        }
      }
#pragma unroll
      for (int kk = 0; kk < kDSteps; ++kk) {
        uint32_t ka[4];
        uint32_t va[4];
        ldmatrix_x4(ka, sm.k + a_offset_base + kk * 16);
        ldmatrix_x4(va, sm.v + a_offset_base + kk * 16);
#pragma unroll
        for (int np = 0; np < kQueryTiles / 2; ++np) {
          const int b_offset =
              (qc * kQueryChunk + np * 16 + (lane / 16) * 8 + lane % 8) * G::kStride + kk * 16 +
              ((lane / 8) % 2) * 8;
          uint32_t qb[4];
          uint32_t db[4];
          ldmatrix_x4(qb, q_tile + b_offset);
          ldmatrix_x4(db, do_tile + b_offset);
          mma_16816<Element>(st[2 * np], ka, qb[0], qb[1]);
          mma_16816<Element>(st[2 * np + 1], ka, qb[2], qb[3]);
          mma_16816<Element>(dpt[2 * np], va, db[0], db[1]);
          mma_16816<Element>(dpt[2 * np + 1], va, db[2], db[3]);
        }
      }

      // P^T and dS^T (in dpt). Row = key 16w + g (+8), column = query; lse -inf -> P = 0.
#pragma unroll
      for (int n = 0; n < kQueryTiles; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int query = qc * kQueryChunk + n * 8 + 2 * t + (e & 1);
          const float lse = lse_tile[query];
          const float lse2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
          bool masked;
          if constexpr (kDocumentMask) {
            masked = key_off[e >> 1] ||
                     key_hidden_at<true>(key_pos[e >> 1], q_pos0 + query, key_start_tile + query);
          } else {
            masked =
                mask && (key_off[e >> 1] || key_hidden<false>(key_pos[e >> 1], q_pos0 + query, 0));
          }
          const float prob = masked ? 0.f : exp2f(st[n][e] * scale_log2 - lse2);
          st[n][e] = prob;
          dpt[n][e] = prob * (dpt[n][e] - delta_tile[query]);
        }
      }

      // dV += P^T dO, dK += dS^T Q: A from registers (n-tiles 2j, 2j + 1 = k-step j over the
      // queries); B = dO / Q [query][d] = [k][n] by transposed ldmatrix.
#pragma unroll
      for (int j = 0; j < kQueryTiles / 2; ++j) {
        const uint32_t pa[4] = {pack2<Element>(st[2 * j][0], st[2 * j][1]),
                                pack2<Element>(st[2 * j][2], st[2 * j][3]),
                                pack2<Element>(st[2 * j + 1][0], st[2 * j + 1][1]),
                                pack2<Element>(st[2 * j + 1][2], st[2 * j + 1][3])};
        const uint32_t sa[4] = {pack2<Element>(dpt[2 * j][0], dpt[2 * j][1]),
                                pack2<Element>(dpt[2 * j][2], dpt[2 * j][3]),
                                pack2<Element>(dpt[2 * j + 1][0], dpt[2 * j + 1][1]),
                                pack2<Element>(dpt[2 * j + 1][2], dpt[2 * j + 1][3])};
#pragma unroll
        for (int dp = 0; dp < kDSteps; ++dp) {
          const int b_offset =
              (qc * kQueryChunk + j * 16 + lane % 8 + ((lane / 8) % 2) * 8) * G::kStride + dp * 16 +
              (lane / 16) * 8;
          uint32_t db[4];
          uint32_t qb[4];
          ldmatrix_x4_trans(db, do_tile + b_offset);
          ldmatrix_x4_trans(qb, q_tile + b_offset);
          mma_16816<Element>(dv[2 * dp], pa, db[0], db[1]);
          mma_16816<Element>(dv[2 * dp + 1], pa, db[2], db[3]);
          mma_16816<Element>(dk[2 * dp], sa, qb[0], qb[1]);
          mma_16816<Element>(dk[2 * dp + 1], sa, qb[2], qb[3]);
        }
      }
    }

    // Every warp is done with this stage before it is refilled.
    __syncthreads();
    stage ^= 1;
    it = next;
  }
  cp_async_wait<0>();
}

// Zeroes the dK/dV accumulators of this thread before a kernel's passes.
template <int kHeadDim>
__device__ __forceinline__ void zero_dkdv(float (&dk)[kHeadDim / 8][4],
                                          float (&dv)[kHeadDim / 8][4]) {
#pragma unroll
  for (int dn = 0; dn < kHeadDim / 8; ++dn) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      dk[dn][e] = 0.f;
      dv[dn][e] = 0.f;
    }
  }
}

// Carves the frame of dkdv_smem_bytes out of dynamic shared memory.
template <typename Element, int kHeadDim, bool kDocumentMask>
__device__ __forceinline__ DkdvSmem<Element, kHeadDim> dkdv_smem_frame(unsigned char* smem) {
  using G = TileGeometry<kHeadDim>;
  DkdvSmem<Element, kHeadDim> sm;
  sm.k = reinterpret_cast<Element*>(smem);
  sm.v = sm.k + G::kElems;
  sm.q = sm.v + G::kElems;
  sm.dout = sm.q + kStages * G::kElems;
  sm.ds = nullptr;
  sm.p = nullptr;
  sm.lse = reinterpret_cast<float*>(sm.dout + kStages * G::kElems);
  sm.delta = sm.lse + kStages * kTile;
  sm.key_start = reinterpret_cast<int32_t*>(sm.delta + kStages * kTile);
  sm.key_masks = reinterpret_cast<uint64_t*>(sm.key_start + (kDocumentMask ? kStages * kTile : 0));
  sm.entries = reinterpret_cast<int32_t*>(sm.key_masks + kMaskSlots);
  sm.misc = sm.entries + kMaskSlots;
  sm.tile_ring = nullptr;
  return sm;
}

// dk[row] += scale * dK and dv[row] += dV for this thread's two accumulator rows (keys 16w + g and
// 16w + g + 8), whose first elements in dk/dv are at row_offset (-1: a padding row, skipped). The
// calling CTA alone owns these rows, so plain read-modify-write.
template <int kHeadDim>
__device__ __forceinline__ void add_dkdv_rows(const float (&dk)[kHeadDim / 8][4],
                                              const float (&dv)[kHeadDim / 8][4], float scale,
                                              const int64_t (&row_offset)[2], float* dk_g,
                                              float* dv_g) {
  const int t = static_cast<int>(threadIdx.x) % 4;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    if (row_offset[i] < 0) continue;
#pragma unroll
    for (int dn = 0; dn < kHeadDim / 8; ++dn) {
      float2* dk_ptr = reinterpret_cast<float2*>(dk_g + row_offset[i] + dn * 8 + 2 * t);
      float2* dv_ptr = reinterpret_cast<float2*>(dv_g + row_offset[i] + dn * 8 + 2 * t);
      float2 dk_value = *dk_ptr;
      float2 dv_value = *dv_ptr;
      dk_value.x += scale * dk[dn][2 * i];
      dk_value.y += scale * dk[dn][2 * i + 1];
      dv_value.x += dv[dn][2 * i];
      dv_value.y += dv[dn][2 * i + 1];
      *dk_ptr = dk_value;
      *dv_ptr = dv_value;
    }
  }
}

}  // namespace sparsering::kernels

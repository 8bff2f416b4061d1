// The backward's deterministic dK/dV kernel (see sparse_attention_backward.cu for the three
// schedules): one CTA per 64-key tile walks the transposed block and column indexes and writes
// its dK/dV without atomics, in a fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "device_constants.cuh"
#include "device_convert.cuh"
#include "device_ptx.cuh"
#include "sparse_attention_backward_kv_major.cuh"
#include "sparse_attention_backward_launch.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {
namespace {

// Entries of the transposed column index are bucketed kMaskSlots at a time.
constexpr int kMaskSlots = 512;

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

// dK, dV += contributions of the query tiles of `tiles` (see the deterministic kernel below for the
// products) for a kv tile of kTile keys (warp w owns keys 16w..16w+15), honouring the tiles' column
// key masks. Streams the query tiles through the kStages buffers; K and V must be in shared memory
// (or in flight in an older cp.async group) before the call. Returns with this
// thread's copies complete; when it ran tiles, all warps are past their last read of the query
// buffers, but `tiles` itself (entries, masks) may still be read by other warps: synchronize
// before rewriting it.
template <typename Element, int kHeadDim, bool kDocumentMask>
__device__ __forceinline__ void accumulate_dkdv(const QueryTiles& tiles,
                                                const SparseAttentionBackwardParams& bp, int b,
                                                const DkdvSmem<Element, kHeadDim>& sm,
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
          const int key = warp * 16 + g + (e >> 1) * 8;
          const float lse = lse_tile[query];
          const float lse2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
          bool masked;
          if constexpr (kDocumentMask) {
            const int key_pos = tiles.k_pos0 + key;
            masked = key_off[e >> 1] || key_pos > q_pos0 + query || key_pos < key_start_tile[query];
          } else {
            masked = mask && (key_off[e >> 1] || tiles.k_pos0 + key > q_pos0 + query);
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

// Deterministic dK/dV per kv tile. Grid (k_tokens / 64, num_kv_heads, batch), 128 threads; warp w
// owns keys 16w..16w+15 and computes transposed products with the keys as mma rows:
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//   dV += P^T dO, dK += dS^T Q,
// so P^T and dS^T feed the second products straight from registers. Query tiles come first from
// the transposed block index (all keys attended), then from the transposed column index: the
// entries of the tile's 64 column keys are bucketed by entry id into per-entry 64-bit key masks
// (kMaskSlots entry ids per window), so each query block meets the tile once, as one masked
// tensor-core tile, however many of its keys it attends. Entries are processed in ascending
// order and every sum has a fixed order: the result is bitwise reproducible.
template <typename Element, int kHeadDim, bool kDocumentMask>
__global__ void __launch_bounds__(kThreads) sparse_attention_backward_dkdv_kernel(
    const __grid_constant__ SparseAttentionBackwardParams bp) {
  using G = TileGeometry<kHeadDim>;
  constexpr int kDTiles = kHeadDim / 8;
  const SparseAttentionParams& p = bp.forward;

  extern __shared__ __align__(16) unsigned char smem[];
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

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int k_tile = blockIdx.x;
  const int kvh = blockIdx.y;
  const int b = blockIdx.z;
  const int tiles_per_block = p.block_size / kTile;
  const int k_token0 = k_tile * kTile;
  const QueryTiles tiles = transposed_block_tiles<kTile>(bp, k_tile, kvh, b);

  // The transposed column rows of the tile's 64 keys are consecutive: one range of entries.
  const int64_t c_row0 = (static_cast<int64_t>(b) * p.num_kv_heads + kvh) * p.k_tokens + k_token0;
  const int column_begin = bp.t_column_row_offsets[c_row0];
  const int column_end = bp.t_column_row_offsets[c_row0 + kTile];
  if (tiles.next(0) >= tiles.num_tiles && column_begin == column_end) return;  // CTA-uniform

  const int64_t kv_token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const int64_t kv_offset = kv_tile_offset<kHeadDim, kTile>(p, kv_token_stride, k_tile, kvh, b);
  // K and V stay resident; their copy group completes inside the first accumulate_dkdv wait.
  load_kv_tile<Element, kHeadDim, kTile, kThreads>(p, kv_offset, sm.k, sm.v);

  float dk[kDTiles][4];
  float dv[kDTiles][4];
#pragma unroll
  for (int dn = 0; dn < kDTiles; ++dn) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      dk[dn][e] = 0.f;
      dv[dn][e] = 0.f;
    }
  }

  // Range of column entry ids present, so that only windows holding entries are visited.
  int entry_lo = 0;
  int entry_hi = -1;
  if (column_begin < column_end) {
    if (threadIdx.x == 0) {
      sm.misc[1] = INT_MAX;
      sm.misc[2] = INT_MIN;
    }
    __syncthreads();
    int lowest = INT_MAX;
    int highest = INT_MIN;
    for (int c = column_begin + static_cast<int>(threadIdx.x); c < column_end; c += kThreads) {
      const int entry = bp.t_column_entries[c];
      lowest = min(lowest, entry);
      highest = max(highest, entry);
    }
    lowest = __reduce_min_sync(kFullMask, lowest);
    highest = __reduce_max_sync(kFullMask, highest);
    if (lane == 0) {
      atomicMin(&sm.misc[1], lowest);
      atomicMax(&sm.misc[2], highest);
    }
    __syncthreads();
    entry_lo = sm.misc[1];
    entry_hi = sm.misc[2];
  }

  // Pass 0: active blocks. Each later pass: one window of kMaskSlots column entry ids. (One call
  // site keeps the pipeline inlined once.)
  QueryTiles pass_tiles = tiles;
  for (int window = entry_lo;; window += kMaskSlots) {
    accumulate_dkdv<Element, kHeadDim, kDocumentMask>(pass_tiles, bp, b, sm, dk, dv);
    if (window > entry_hi) break;  // CTA-uniform
    __syncthreads();               // masks and entries of the previous window are consumed
    for (int i = static_cast<int>(threadIdx.x); i < kMaskSlots; i += kThreads) {
      sm.key_masks[i] = 0;
    }
    __syncthreads();
    // Warp w sets bit j for keys j = w, w + 4, ...; the OR is order-independent.
    for (int j = warp; j < kTile; j += kWarps) {
      const int c_end = bp.t_column_row_offsets[c_row0 + j + 1];
      for (int c = bp.t_column_row_offsets[c_row0 + j] + lane; c < c_end; c += 32) {
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
    pass_tiles.entries = sm.entries;
    pass_tiles.key_masks = sm.key_masks;
    pass_tiles.num_tiles = sm.misc[0] * tiles_per_block;
  }
  cp_async_wait<0>();  // K/V copies, when no query tile was visible at all

  // This CTA alone owns these dk/dv rows, so plain read-modify-write.
  const float scale = p.softmax_scale;
  float* dk_g = bp.dk + kv_offset;
  float* dv_g = bp.dv + kv_offset;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int64_t row = (warp * 16 + g + 8 * i) * kv_token_stride;
#pragma unroll
    for (int dn = 0; dn < kDTiles; ++dn) {
      float2* dk_ptr = reinterpret_cast<float2*>(dk_g + row + dn * 8 + 2 * t);
      float2* dv_ptr = reinterpret_cast<float2*>(dv_g + row + dn * 8 + 2 * t);
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

}  // namespace

template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_deterministic_dkdv(const SparseAttentionBackwardParams& bp,
                                      cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  const dim3 kv_grid(p.k_tokens / kTile, p.num_kv_heads, p.batch);
  return launch(sparse_attention_backward_dkdv_kernel<Element, kHeadDim, kDocumentMask>, kv_grid,
                dkdv_smem_bytes<Element, kHeadDim, kDocumentMask>(), stream, bp);
}

#define SPARSERING_INSTANTIATE(Element, kHeadDim, kDocumentMask)                    \
  template cudaError_t launch_deterministic_dkdv<Element, kHeadDim, kDocumentMask>( \
      const SparseAttentionBackwardParams&, cudaStream_t);
SPARSERING_BACKWARD_VARIANTS(SPARSERING_INSTANTIATE)
#undef SPARSERING_INSTANTIATE

}  // namespace sparsering::kernels

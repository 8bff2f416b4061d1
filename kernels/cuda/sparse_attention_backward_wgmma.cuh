// The per-kv-block backward (see sparse_attention_backward.cu) on Hopper's warpgroup MMA, for
// head dim 64 or 128 and 128-key blocks: the same schedule and results as
// sparse_attention_backward_kv_kernel, but each product is one warpgroup-wide wgmma chain reading
// its operands straight from 128-byte-swizzled shared memory (wgmma.cuh), instead of mma.sync
// tiles whose every fragment goes through ldmatrix. sparse_attention_backward_kv.cu launches
// it.
//
// Two warpgroups; warpgroup w owns keys 64 w .. +63 of the kv block. Per 64-query tile:
//   S^T  = K_w Q^T,  dP^T = V_w dO^T          (m64n64, A and B K-major from shared memory)
//   P^T  = exp(scale S^T - lse),  dS^T = P^T (dP^T - delta)     (registers, rows = keys)
//   dV_w += P^T dO,  dK_w += dS^T Q           (m64nD for head dim D, A = P^T / dS^T from
//                                              registers, B N-major)
//   dQ[:, 64 w .. +63] = dS K                 (m64n64, A = dS^T staged in shared memory read
//                                              M-major, B = K read N-major), added with atomics.
//   At head dim 64 the two warpgroups split the keys instead of dQ's columns: warpgroup w adds
//   dS[:, keys 64 w .. +63] K[keys 64 w .. +63, :], so both add as many dQ elements as at 128.
// With the keys as accumulator rows, P^T and dS^T feed the dV / dK products from registers with no
// shared-memory round trip; only dS^T is staged, once, for dQ.
#pragma once

#include <cmath>
#include <cstdint>

#include "device_atomics.cuh"
#include "device_constants.cuh"
#include "device_convert.cuh"
#include "device_mask.cuh"
#include "device_ptx.cuh"
#include "sparse_attention_backward_kv_major.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"
#include "wgmma.cuh"

namespace sparsering::kernels {

constexpr int kWgmmaKeys = 128;
constexpr int kWgmmaThreads = 256;  // two warpgroups
// Bytes of the swizzled tiles: rows x head-dim elements (head dim / 64 panels of 64 columns).
template <int kHeadDim>
constexpr int kKvTileBytes = 2 * (kWgmmaKeys * kHeadDim);
template <int kHeadDim>
constexpr int kQueryTileBytes = 2 * (kTile * kHeadDim);
constexpr int kQueryPanelBytes = kTile * 128;
constexpr int kKvPanelBytes = kWgmmaKeys * 128;
constexpr int kDsTileBytes = kWgmmaKeys * kTile * 2;  // dS^T [key][query], one panel

// Query-tile stages: tile it + 1 streams in while tile it computes and tile it - 1's dV/dK
// products still read their stage (see the kernel).
constexpr int kWgmmaQueryStages = 3;

template <int kHeadDim, bool kDocumentMask>
constexpr int kv_wgmma_smem_bytes() {
  // K, V, the stages of Q and dO, dS^T, the stages of lse, delta [and key starts], three
  // prefetched query tiles, and 1 KB to align the tiles to 1024 bytes.
  constexpr int kStages = kWgmmaQueryStages;
  return 2 * kKvTileBytes<kHeadDim> + 2 * kStages * kQueryTileBytes<kHeadDim> + kDsTileBytes +
         (kDocumentMask ? 3 : 2) * kStages * kTile * static_cast<int>(sizeof(float)) +
         3 * static_cast<int>(sizeof(QueryTile)) + 1024;
}

// Starts copying kRows rows of kHeadDim elements (row stride token_stride elements) into a
// swizzled tile with cp.async over the CTA's 256 threads (not committed).
template <typename Element, int kRows, int kHeadDim>
__device__ __forceinline__ void load_swizzled_rows(const Element* src, int64_t token_stride,
                                                   unsigned char* dst) {
  constexpr int kRowChunks = kHeadDim / 8;  // 16-byte chunks of a row
  constexpr int kChunks = kRows * kRowChunks / kWgmmaThreads;
  static_assert(kRows * kRowChunks % kWgmmaThreads == 0, "tile copy must split evenly");
#pragma unroll
  for (int i = 0; i < kChunks; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kWgmmaThreads;
    const int r = c / kRowChunks;
    const int chunk = c % kRowChunks;
    unsigned char* to = dst + (chunk / 8) * kRows * 128 + wgmma::swizzled_offset(r, chunk % 8);
    cp_async_16(to, src + r * token_stride + chunk * 8, true);
  }
}

// Q, dO, lse, delta [and key starts] of one query tile into stage buffers (not committed).
template <typename Element, int kHeadDim, bool kDocumentMask>
__device__ __forceinline__ void load_query_tile_swizzled(const QueryTile& tile,
                                                         const SparseAttentionBackwardParams& bp,
                                                         int b, unsigned char* q_dst,
                                                         unsigned char* do_dst, float* lse_dst,
                                                         float* delta_dst, int32_t* key_start_dst) {
  const SparseAttentionParams& p = bp.forward;
  const int64_t token_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const int64_t offset =
      (static_cast<int64_t>(b) * p.q_tokens + tile.token0) * token_stride + tile.head * kHeadDim;
  load_swizzled_rows<Element, kTile, kHeadDim>(static_cast<const Element*>(p.q) + offset,
                                               token_stride, q_dst);
  load_swizzled_rows<Element, kTile, kHeadDim>(static_cast<const Element*>(bp.dout) + offset,
                                               token_stride, do_dst);
  const int64_t stat =
      (static_cast<int64_t>(b) * p.num_heads + tile.head) * p.q_tokens + tile.token0;
  const int tid = static_cast<int>(threadIdx.x);
  if (tid < 16) {
    cp_async_16(lse_dst + 4 * tid, p.lse + stat + 4 * tid, true);
  } else if (tid < 32) {
    cp_async_16(delta_dst + 4 * (tid - 16), bp.delta + stat + 4 * (tid - 16), true);
  } else if (kDocumentMask && tid < 48) {
    const int32_t* starts = p.q_key_start + static_cast<int64_t>(b) * p.q_tokens + tile.token0;
    cp_async_16(key_start_dst + 4 * (tid - 32), starts + 4 * (tid - 32), true);
  }
}

// Grid (k_tokens / 128, num_kv_heads, batch), 256 threads, one CTA per SM at head dim 128 (182 KB
// of shared memory; 101 KB at head dim 64). Non-deterministic like
// sparse_attention_backward_kv_kernel: dQ by fp32 atomics, dK/dV written once at the end (plain
// read-modify-write; the column pass adds later, in stream order). Per query tile: B1 (tile
// landed), retire the previous tile's dV/dK, S^T and dP^T, P^T and dS^T, B2 (dS^T complete), then
// dQ and dV/dK issued together: the dQ atomics, the next tile's copy issue, lookups and B1 run
// while dV/dK execute, and the third stage lets tile it + 1 stream in meanwhile. A stage is
// refilled two tiles after its last reader and dS^T one tile after (each warpgroup waits for its dQ
// before the next B1): two barriers per tile. On the H200 this beat a schedule that waited for
// dV/dK before the dQ atomics, with a third barrier per tile, by 6-9% (bench/results/*_s6*).
template <typename Element, int kHeadDim, bool kDocumentMask>
__global__ void __launch_bounds__(kWgmmaThreads, 1) sparse_attention_backward_kv_wgmma_kernel(
    const __grid_constant__ SparseAttentionBackwardParams bp) {
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dim 64 or 128");
  constexpr int kKvBytes = kKvTileBytes<kHeadDim>;
  constexpr int kQueryBytes = kQueryTileBytes<kHeadDim>;
  constexpr int kOutTiles = kHeadDim / 8;  // n-tiles of the dK / dV accumulators
  const SparseAttentionParams& p = bp.forward;
  const int k_tile = blockIdx.x;
  const int kvh = blockIdx.y;
  const int b = blockIdx.z;
  const QueryTiles tiles = transposed_block_tiles<kWgmmaKeys>(bp, k_tile, kvh, b);
  if (tiles.num_tiles == 0) return;  // CTA-uniform

  extern __shared__ __align__(16) unsigned char smem_raw[];
  // wgmma's 128-byte swizzle repeats every 1024 bytes: start every tile on such a boundary.
  unsigned char* smem = smem_raw + ((1024 - (smem_address(smem_raw) & 1023)) & 1023);
  unsigned char* k_s = smem;
  unsigned char* v_s = k_s + kKvBytes;
  constexpr int kStages = kWgmmaQueryStages;
  unsigned char* q_s = v_s + kKvBytes;                // kStages
  unsigned char* do_s = q_s + kStages * kQueryBytes;  // kStages
  unsigned char* ds_s = do_s + kStages * kQueryBytes;
  float* lse_s = reinterpret_cast<float*>(ds_s + kDsTileBytes);  // kStages x kTile
  float* delta_s = lse_s + kStages * kTile;
  int32_t* key_start_s = reinterpret_cast<int32_t*>(delta_s + kStages * kTile);
  QueryTile* tile_ring =
      reinterpret_cast<QueryTile*>(delta_s + (kDocumentMask ? 2 : 1) * kStages * kTile);

  const int64_t kv_token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const int64_t kv_offset =
      kv_tile_offset<kHeadDim, kWgmmaKeys>(p, kv_token_stride, k_tile, kvh, b);
  load_swizzled_rows<Element, kWgmmaKeys, kHeadDim>(static_cast<const Element*>(p.k) + kv_offset,
                                                    kv_token_stride, k_s);
  load_swizzled_rows<Element, kWgmmaKeys, kHeadDim>(static_cast<const Element*>(p.v) + kv_offset,
                                                    kv_token_stride, v_s);
  cp_async_commit();

  // Index lookups of tile it + 2 are issued during tile it and handed over in tile_ring, as in
  // accumulate_block_gradients of sparse_attention_backward_kv.cu (every entry is a causal pair of
  // whole blocks: no tile is empty).
  if (threadIdx.x == 0) {
    tile_ring[0] = tiles.tile(0);
    if (tiles.num_tiles > 1) tile_ring[1] = tiles.tile(1);
  }
  __syncthreads();
  load_query_tile_swizzled<Element, kHeadDim, kDocumentMask>(tile_ring[0], bp, b, q_s, do_s, lse_s,
                                                             delta_s, key_start_s);
  cp_async_commit();

  const int warpgroup = static_cast<int>(threadIdx.x) / 128;
  const int warp = (static_cast<int>(threadIdx.x) % 128) / 32;  // within the warpgroup
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const float scale_log2 = p.softmax_scale * kLog2e;
  const int64_t q_token_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const uint32_t k_addr = smem_address(k_s);
  const uint32_t v_addr = smem_address(v_s);
  const uint32_t ds_addr = smem_address(ds_s);
  // Accumulator rows of this thread: keys key_row and key_row + 8 of the kv block.
  const int key_row = 64 * warpgroup + 16 * warp + g;

  float dk[kOutTiles][4];  // overwritten by the first tile's wgmma (accumulate = 0)
  float dv[kOutTiles][4];

  // dV += P^T dO and dK += dS^T Q over a tile's queries: step kk reads queries 16 kk .. +15, the
  // rows 2048 bytes into every panel of dO / Q (N-major). One commit group. accumulate = 0 makes
  // the first step overwrite instead (the first tile starts dK/dV that way: zeroing them with
  // ordinary instructions would make ptxas serialize the in-flight wgmma, C7515).
  auto issue_dkdv = [&](const uint32_t(&p_frag)[4][4], const uint32_t(&ds_frag)[4][4],
                        uint32_t q_addr, uint32_t do_addr, int accumulate) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      wgmma::mma_rs<Element, 1>(dv, p_frag[kk],
                                wgmma::descriptor(do_addr + kk * 2048, kQueryPanelBytes, 1024),
                                kk > 0 ? 1 : accumulate);
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      wgmma::mma_rs<Element, 1>(dk, ds_frag[kk],
                                wgmma::descriptor(q_addr + kk * 2048, kQueryPanelBytes, 1024),
                                kk > 0 ? 1 : accumulate);
    }
    wgmma::commit_group();
  };
  // Head dim 128: dQ[:, 64 w .. +63] = dS K over the block's keys: step kk reads keys 16 kk .. +15
  // of dS^T (M-major) and of panel w of K (N-major). Head dim 64: dQ += dS[:, keys of w] K[keys of
  // w, :], steps over keys 64 w + 16 kk .. +15 of dS^T and of K's one panel. One commit group.
  auto issue_dq = [&](float(&dq)[8][4]) {
    constexpr int kSteps = kHeadDim == 128 ? 8 : 4;
    const uint32_t key0_bytes = kHeadDim == 128 ? 0 : warpgroup * kSteps * 2048;
    const uint32_t k_panel = kHeadDim == 128 ? warpgroup * kKvPanelBytes : 0;
#pragma unroll
    for (int kk = 0; kk < kSteps; ++kk) {
      wgmma::mma_m64n64k16_ss<Element, 1, 1>(
          dq, wgmma::descriptor(ds_addr + key0_bytes + kk * 2048, kDsTileBytes, 1024),
          wgmma::descriptor(k_addr + k_panel + key0_bytes + kk * 2048, kKvPanelBytes, 1024), kk);
    }
    wgmma::commit_group();
  };

  int stage = 0;
  for (int it = 0; it < tiles.num_tiles; ++it) {
    if (it + 1 < tiles.num_tiles) {
      const int next = (stage + 1) % kStages;
      load_query_tile_swizzled<Element, kHeadDim, kDocumentMask>(
          tile_ring[(it + 1) % 3], bp, b, q_s + next * kQueryBytes, do_s + next * kQueryBytes,
          lse_s + next * kTile, delta_s + next * kTile,
          kDocumentMask ? key_start_s + next * kTile : nullptr);
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform for the wait
    const bool prefetch = threadIdx.x == 0 && it + 2 < tiles.num_tiles;
    QueryTile later{};
    if (prefetch) later = tiles.tile(it + 2);
    cp_async_wait<1>();
    wgmma::fence_proxy_async();  // the landed tiles are read by wgmma (async proxy)
    __syncthreads();
    // With no end-of-tile barrier the prefetched lookups go in now: their slot's last readers
    // (tile it - 1's `current`, tile it - 2's copy) are past B1, and tile it + 1's copy reads them
    // after B2.
    if (prefetch) tile_ring[(it + 2) % 3] = later;

    const uint32_t q_addr = smem_address(q_s + stage * kQueryBytes);
    const uint32_t do_addr = smem_address(do_s + stage * kQueryBytes);
    const QueryTile current = tile_ring[it % 3];
    const bool mask = tiles.k_pos_last > current.pos0;  // the tile meets the causal diagonal

    // S^T = K_w Q^T and dP^T = V_w dO^T over the head dim: step kk reads 16 columns, 32 bytes
    // into panel kk / 4 of both operands (head dim / 16 steps).
    float s[8][4];
    float dp[8][4];
    // The previous tile's dV/dK read p_frag and ds_frag from registers until they finish: retire
    // them before S^T and dP^T need registers.
    wgmma::wait_group<0>();
    wgmma::fence_operands(dk);
    wgmma::fence_operands(dv);
    wgmma::fence();
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint32_t kv_step = (kk / 4) * kKvPanelBytes + 64 * warpgroup * 128 + (kk % 4) * 32;
      const uint32_t q_step = (kk / 4) * kQueryPanelBytes + (kk % 4) * 32;
      wgmma::mma_m64n64k16_ss<Element, 0, 0>(s, wgmma::descriptor(k_addr + kv_step, 16, 1024),
                                             wgmma::descriptor(q_addr + q_step, 16, 1024), kk);
    }
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint32_t kv_step = (kk / 4) * kKvPanelBytes + 64 * warpgroup * 128 + (kk % 4) * 32;
      const uint32_t q_step = (kk / 4) * kQueryPanelBytes + (kk % 4) * 32;
      wgmma::mma_m64n64k16_ss<Element, 0, 0>(dp, wgmma::descriptor(v_addr + kv_step, 16, 1024),
                                             wgmma::descriptor(do_addr + q_step, 16, 1024), kk);
    }
    wgmma::commit_group();
    wgmma::wait_group<0>();
    wgmma::fence_operands(s);
    wgmma::fence_operands(dp);

    // P^T and dS^T: rows are keys key_row (+8), columns queries 8 n + 2 t (+1).
    const float* lse_tile = lse_s + stage * kTile;
    const float* delta_tile = delta_s + stage * kTile;
    uint32_t p_frag[4][4];   // A fragments of dV += P^T dO, one per 16 queries
    uint32_t ds_frag[4][4];  // and of dK += dS^T Q
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int query = 8 * n + 2 * t + c;
        const float lse = lse_tile[query];
        const float lse2 = lse == -INFINITY ? INFINITY : lse * kLog2e;
        const float delta = delta_tile[query];
        const int q_pos = current.pos0 + query;
        int key_start = 0;
        if constexpr (kDocumentMask) key_start = key_start_s[stage * kTile + query];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int e = 2 * h + c;
          const int key_pos = tiles.k_pos0 + key_row + 8 * h;
          bool masked;
          if constexpr (kDocumentMask) {
            masked = key_hidden<true>(key_pos, q_pos, key_start);
          } else {
            masked = mask && key_hidden<false>(key_pos, q_pos, 0);
          }
          const float prob = masked ? 0.f : exp2f(s[n][e] * scale_log2 - lse2);
          s[n][e] = prob;
          dp[n][e] = prob * (dp[n][e] - delta);
        }
      }
      // n-tile n holds queries 8 n .. +7: the low (n even) or high half of A step n / 2.
      const int half = 2 * (n % 2);
      p_frag[n / 2][half] = pack2<Element>(s[n][0], s[n][1]);
      p_frag[n / 2][half + 1] = pack2<Element>(s[n][2], s[n][3]);
      ds_frag[n / 2][half] = pack2<Element>(dp[n][0], dp[n][1]);
      ds_frag[n / 2][half + 1] = pack2<Element>(dp[n][2], dp[n][3]);
      // dS^T [key][query] for dQ: rows key_row, key_row + 8, chunk n.
      *reinterpret_cast<uint32_t*>(ds_s + wgmma::swizzled_offset(key_row, n) + 4 * t) =
          ds_frag[n / 2][half];
      *reinterpret_cast<uint32_t*>(ds_s + wgmma::swizzled_offset(key_row + 8, n) + 4 * t) =
          ds_frag[n / 2][half + 1];
    }
    wgmma::fence_proxy_async();  // dS^T is read by the dQ wgmma of both warpgroups

    float dq[8][4];
    __syncthreads();  // B2: dS^T of both warpgroups is in shared memory
    wgmma::fence();
    issue_dq(dq);
    issue_dkdv(p_frag, ds_frag, q_addr, do_addr, it > 0);
    wgmma::wait_group<1>();  // dQ
    wgmma::fence_operands(dq);

    // dq rows: queries 16 warp + g (+8), columns 64 w + 8 n + 2 t (8 n + 2 t at head dim 64, where
    // both warpgroups add to every column): 16-byte atomics (pair_rows4).
    const bool odd = (t & 1) != 0;
    float* dq_row =
        bp.dq +
        (static_cast<int64_t>(b) * p.q_tokens + current.token0 + 16 * warp + g + (odd ? 8 : 0)) *
            q_token_stride +
        current.head * kHeadDim + (kHeadDim == 128 ? 64 * warpgroup : 0) + 2 * (t & ~1);
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      atomic_add4(dq_row + 8 * n, pair_rows4(dq[n], odd, p.softmax_scale));
    }

    stage = (stage + 1) % kStages;
  }
  wgmma::wait_group<0>();  // the last tile's dV/dK
  wgmma::fence_operands(dk);
  wgmma::fence_operands(dv);
  cp_async_wait<0>();

  // dK (times the softmax scale) and dV rows key_row, key_row + 8, columns 8 n + 2 t. This CTA
  // alone owns these rows within this kernel, so plain read-modify-write.
  const float scale = p.softmax_scale;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t row = kv_offset + (key_row + 8 * h) * kv_token_stride + 2 * t;
#pragma unroll
    for (int n = 0; n < kOutTiles; ++n) {
      float2* dk_ptr = reinterpret_cast<float2*>(bp.dk + row + 8 * n);
      float2* dv_ptr = reinterpret_cast<float2*>(bp.dv + row + 8 * n);
      float2 dk_value = *dk_ptr;
      float2 dv_value = *dv_ptr;
      dk_value.x += scale * dk[n][2 * h];
      dk_value.y += scale * dk[n][2 * h + 1];
      dv_value.x += dv[n][2 * h];
      dv_value.y += dv[n][2 * h + 1];
      *dk_ptr = dk_value;
      *dv_ptr = dv_value;
    }
  }
}

}  // namespace sparsering::kernels

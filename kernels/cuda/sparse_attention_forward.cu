// Block-sparse flash attention forward on the vertical-slash index of sparse_attention_params.h.
//
// Schedule of FlashAttention-2 (Dao 2023, Alg. 1): one CTA per query tile walks the kv tiles of
// its CSR row (64-key sub-tiles of the active blocks, then the vertical columns gathered 64 at a
// time) with an online softmax in fp32. Q K^T and P V run on tensor cores via mma.sync.m16n8k16
// with operands loaded by ldmatrix.
//
// This mma.sync kernel runs head dim 128 with 64-token blocks, with and without document
// masking; every other shape runs on wgmma (sparse_attention_forward_wgmma.cuh, below). At that
// shape the wgmma kernel's three 16 KB K/V stages would leave room for one 4-warp CTA per SM where
// this kernel (two stages) runs two.
//
// Tile shape (ForwardConfig): a CTA of 4 warps x 16 rows owns a 64-row query tile and keeps Q in
// registers. The kernel is written for kMBlocks m16 row blocks per warp: with 32 rows per warp
// every K/V fragment read from shared memory feeds 4 mma instead of 2, which is how it ran
// 128-token blocks at head dim 128 before the wgmma kernel (on one H100, dense causal 128K: 312
// TF/s against 269 for 8 warps x 16 rows with Q in registers).
//
// K/V tiles stream through kStages shared-memory buffers with cp.async; one barrier per tile both
// publishes the landed tile and frees the buffer that the next copy overwrites. Only warps whose
// rows straddle the causal diagonal of a tile mask it, and warps entirely above it skip the tile.
//
// The wgmma kernel took dense causal 128K at head dim 128 with 128-token blocks from 451 to 337 ms
// on the H200 (bench/results/*_s6*).
//
// Document masking (p.q_key_start) is a separate instantiation, so the unmasked kernel compiles
// exactly as before: the first visible key of every query row is staged in shared memory and keys
// before it are masked right after the causal rule; a warp skips tiles that end before all its
// rows' documents start and masks tiles that begin before some row's document does.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>

#include "device_constants.cuh"
#include "device_convert.cuh"
#include "device_ptx.cuh"
#include "sparse_attention_cuda.h"
#include "sparse_attention_forward_tiles.cuh"
#include "sparse_attention_forward_wgmma.cuh"

namespace sparsering::kernels {
namespace {

// ================================================================================================
// kernels
// ================================================================================================

// Tile shape of one kernel instantiation: kWarps warps of kMBlocks m16 row blocks each, kKeys keys
// per kv tile, kStages K/V buffers.
template <int kWarpsT, int kMBlocksT, int kKeysT, int kStagesT>
struct ForwardConfig {
  static constexpr int kWarps = kWarpsT;
  static constexpr int kMBlocks = kMBlocksT;
  static constexpr int kKeys = kKeysT;
  static constexpr int kStages = kStagesT;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpRows = 16 * kMBlocks;
  static constexpr int kRows = kWarps * kWarpRows;  // query rows per CTA
  static_assert(kStages >= 2, "the copy of tile i + 1 overlaps the compute of tile i");
  static_assert(kKeys % 16 == 0, "P V consumes keys 16 at a time");
};

// block_size 64: 64 rows, 4 warps x 16 rows.
using Config64 = ForwardConfig<4, 1, 64, 2>;

// Shared-memory layout: the Q tile, kStages K and V tiles, and per stage the key positions of a
// gathered column chunk plus one word of tile metadata. Rows are padded by 16 bytes so that the 8
// row addresses of one ldmatrix 8x8 matrix fall into 8 distinct 16-byte bank groups.
template <typename Element, int kHeadDim, class C>
struct ForwardSmem {
  static constexpr int kStride = kHeadDim + 8;        // elements between rows
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  static constexpr int kQElems = C::kRows * kStride;
  static constexpr int kKvElems = C::kKeys * kStride;
  static constexpr int kBytes =
      (kQElems + 2 * C::kStages * kKvElems) * static_cast<int>(sizeof(Element)) +
      C::kStages * (C::kKeys + 1) * static_cast<int>(sizeof(int));
  static_assert(C::kKeys * kChunksPerRow % C::kThreads == 0, "kv tile copy must split evenly");
  static_assert(C::kRows * kChunksPerRow % C::kThreads == 0, "q tile copy must split evenly");
};

// Copies kv tile `tile` into one stage (cp.async, not committed). A column chunk also gets the
// global position of each key in kpos_dst: padding rows are zero-filled and get position INT_MAX
// so that the causal test masks them. meta_dst receives tile.pos0 (-1 marks a column chunk).
template <typename Element, int kHeadDim, class C>
__device__ __forceinline__ void load_key_tile(const SparseAttentionParams& p,
                                              const KeyTiles<C::kKeys>& tiles, const KeyTile& tile,
                                              int64_t kv_offset, Element* k_dst, Element* v_dst,
                                              int* kpos_dst, int* meta_dst) {
  using S = ForwardSmem<Element, kHeadDim, C>;
  constexpr int kChunksPerThread = C::kKeys * S::kChunksPerRow / C::kThreads;
  constexpr int64_t kTokenStrideUnit = kHeadDim;  // times num_kv_heads
  const Element* k_head = static_cast<const Element*>(p.k) + kv_offset;
  const Element* v_head = static_cast<const Element*>(p.v) + kv_offset;
  const int64_t token_stride = p.num_kv_heads * kTokenStrideUnit;
  const bool is_block = tile.pos0 >= 0;
  const int column0 = is_block ? 0 : (tile.it - tiles.num_block_tiles) * C::kKeys;
#pragma unroll
  for (int i = 0; i < kChunksPerThread; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * C::kThreads;
    const int r = c / S::kChunksPerRow;
    const int chunk = c % S::kChunksPerRow;
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
    cp_async_16(k_dst + r * S::kStride + chunk * 8, k_head + offset, valid);
    cp_async_16(v_dst + r * S::kStride + chunk * 8, v_head + offset, valid);
  }
  if (threadIdx.x == 0) *meta_dst = tile.pos0;
}

// Grid (q_tokens / C::kRows, num_heads, batch), C::kThreads threads. Fragment notation of
// mma.m16n8k16: lane = 4 * g + t; an accumulator c[4] holds rows g (c0, c1) and g + 8 (c2, c3),
// columns 2t and 2t + 1 of its 8-column n-tile. kDocumentMask: p.q_key_start is set.
template <typename Element, int kHeadDim, class C, bool kDocumentMask>
__global__ void __launch_bounds__(C::kThreads)
    sparse_attention_forward_kernel(const __grid_constant__ SparseAttentionParams p) {
  using S = ForwardSmem<Element, kHeadDim, C>;
  constexpr int kMB = C::kMBlocks;
  constexpr int kKeys = C::kKeys;
  constexpr int kStages = C::kStages;
  constexpr int kDSteps = kHeadDim / 16;  // k-steps of Q K^T, pairs of n-tiles of P V
  constexpr int kDTiles = kHeadDim / 8;   // n-tiles of the output
  constexpr int kKeyTiles = kKeys / 8;    // n-tiles of S
  // Q fragments live in registers when they fit beside the accumulators (16 rows, or head_dim 64).
  constexpr bool kQInRegisters = kMB * kHeadDim <= 128;
  constexpr int kStageBytes = S::kKvElems * static_cast<int>(sizeof(Element));
  constexpr int kRowBytes = S::kStride * static_cast<int>(sizeof(Element));

  extern __shared__ __align__(16) unsigned char smem[];
  Element* q_s = reinterpret_cast<Element*>(smem);
  Element* k_s = q_s + S::kQElems;
  Element* v_s = k_s + kStages * S::kKvElems;
  int* kpos_s = reinterpret_cast<int*>(v_s + kStages * S::kKvElems);
  int* meta_s = kpos_s + kStages * kKeys;
  int* key_start_s = meta_s + kStages;  // kWarps x (kWarpRows + 2), with kDocumentMask only

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  // Heavy (late) causal tiles first, so that the short ones fill the tail of the grid.
  const int q_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q_token0 = q_tile * C::kRows;
  const int q_tiles_per_block = p.block_size / C::kRows;
  const int qb = q_tile / q_tiles_per_block;
  const int q_pos0 = p.q_block_ids[qb] * p.block_size + (q_tile % q_tiles_per_block) * C::kRows;
  const int kvh = h / (p.num_heads / p.num_kv_heads);  // GQA
  const KeyTiles<kKeys> tiles = make_key_tiles<kKeys>(p, b, h, qb, q_pos0, C::kRows);

  const int64_t q_token_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const int64_t kv_token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const Element* q_g = static_cast<const Element*>(p.q) +
                       (static_cast<int64_t>(b) * p.q_tokens + q_token0) * q_token_stride +
                       h * kHeadDim;
  const int64_t kv_offset = static_cast<int64_t>(b) * p.k_tokens * kv_token_stride + kvh * kHeadDim;

  // Prologue: the Q tile (group 0) and the first kStages - 1 kv tiles (one group each, possibly
  // empty so that the group count stays uniform for the waits below).
  constexpr int kQChunksPerThread = C::kRows * S::kChunksPerRow / C::kThreads;
#pragma unroll
  for (int i = 0; i < kQChunksPerThread; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * C::kThreads;
    const int r = c / S::kChunksPerRow;
    const int chunk = c % S::kChunksPerRow;
    cp_async_16(q_s + r * S::kStride + chunk * 8, q_g + r * q_token_stride + chunk * 8, true);
  }
  cp_async_commit();
  KeyTile pending = tiles.resolve(p, 0);  // next tile to copy
  int issued = 0;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (pending.it < tiles.num_tiles) {
      load_key_tile<Element, kHeadDim, C>(p, tiles, pending, kv_offset, k_s + s * S::kKvElems,
                                          v_s + s * S::kKvElems, kpos_s + s * kKeys, meta_s + s);
      ++issued;
      pending = tiles.resolve(p, pending.it + 1);
    }
    cp_async_commit();
  }
  cp_async_wait<kStages - 1>();
  // A negative scale is folded into Q: negating bf16/fp16 is exact, and afterwards the scale that
  // multiplies the scores is positive, so the running max can be taken on the raw scores and the
  // scaling fused into the exponent's FFMA. Each thread flips the chunks it copied itself.
  if (p.softmax_scale < 0.f) {
#pragma unroll
    for (int i = 0; i < kQChunksPerThread; ++i) {
      const int c = static_cast<int>(threadIdx.x) + i * C::kThreads;
      uint4* chunk = reinterpret_cast<uint4*>(q_s + (c / S::kChunksPerRow) * S::kStride +
                                              (c % S::kChunksPerRow) * 8);
      uint4 x = *chunk;
      x.x ^= 0x80008000u;
      x.y ^= 0x80008000u;
      x.z ^= 0x80008000u;
      x.w ^= 0x80008000u;
      *chunk = x;
    }
  }
  __syncthreads();

  // ldmatrix lane addresses. Q (A operand, rows lane % 16, columns 8 (lane / 16) of a 16x16
  // block); K stored [key][d] is the "col" B operand: keys 8 (lane / 16) + lane % 8, dims
  // 8 ((lane / 8) % 2) give b0, b1 of two n-tiles; V stored [key][d] = [k][n] is read transposed:
  // keys lane % 8 + 8 ((lane / 8) % 2), dims 8 (lane / 16).
  const uint32_t q_lane =
      smem_address(q_s) + ((warp * C::kWarpRows + lane % 16) * S::kStride + (lane / 16) * 8) *
                              static_cast<int>(sizeof(Element));
  const uint32_t k_lane =
      smem_address(k_s) + (((lane / 16) * 8 + lane % 8) * S::kStride + ((lane / 8) % 2) * 8) *
                              static_cast<int>(sizeof(Element));
  const uint32_t v_lane =
      smem_address(v_s) + ((lane % 8 + ((lane / 8) % 2) * 8) * S::kStride + (lane / 16) * 8) *
                              static_cast<int>(sizeof(Element));

  uint32_t q_frag[kQInRegisters ? kMB : 1][kQInRegisters ? kDSteps : 1][4];
  if constexpr (kQInRegisters) {
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
      for (int kk = 0; kk < kDSteps; ++kk) {
        ldmatrix_x4(q_frag[mb][kk], q_lane + mb * 16 * kRowBytes + kk * 32);
      }
    }
  }

  float acc[kMB][kDTiles][4];
#pragma unroll
  for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
    for (int dn = 0; dn < kDTiles; ++dn) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mb][dn][e] = 0.f;
    }
  }
  // Running max (scaled into log2 units) and this thread's partial row sums of rows g, g + 8 of
  // each row block.
  float row_max[kMB][2];
  float row_sum[kMB][2];
#pragma unroll
  for (int mb = 0; mb < kMB; ++mb) {
    row_max[mb][0] = row_max[mb][1] = -INFINITY;
    row_sum[mb][0] = row_sum[mb][1] = 0.f;
  }
  // Positive (see the negation above); at least FLT_MIN so that a zero scale still turns masked
  // scores (-inf) into -inf instead of NaN, with exp2(tiny) == 1 for the visible ones.
  const float scale_log2 = fmaxf(fabsf(p.softmax_scale) * kLog2e, FLT_MIN);
  const int warp_q0 = q_pos0 + warp * C::kWarpRows;  // global position of the warp's first row
  const int warp_q_last = warp_q0 + C::kWarpRows - 1;
  // Document masking: the first visible key of each of the warp's rows and the smallest and
  // largest of them, staged in the warp's own slice of shared memory (in registers they would
  // live through the whole loop next to the accumulators and spill).
  int* warp_key_start = key_start_s + warp * (C::kWarpRows + 2);  // rows, then min and max
  if constexpr (kDocumentMask) {
    const int row = lane % C::kWarpRows;
    const int start =
        p.q_key_start[static_cast<int64_t>(b) * p.q_tokens + q_token0 + warp * C::kWarpRows + row];
    const int lowest = __reduce_min_sync(kFullMask, start);
    const int highest = __reduce_max_sync(kFullMask, start);
    if (lane < C::kWarpRows) warp_key_start[row] = start;
    if (lane == 0) {
      warp_key_start[C::kWarpRows] = lowest;
      warp_key_start[C::kWarpRows + 1] = highest;
    }
    __syncwarp();
  }

  int stage = 0;
  for (int i = 0; i < issued; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile i has landed, and every warp is done with tile i - 1's stage

    // Refill the stage that tile i - 1 used with the next tile of the walk.
    const bool refill = pending.it < tiles.num_tiles;
    if (refill) {
      const int s = stage == 0 ? kStages - 1 : stage - 1;
      load_key_tile<Element, kHeadDim, C>(p, tiles, pending, kv_offset, k_s + s * S::kKvElems,
                                          v_s + s * S::kKvElems, kpos_s + s * kKeys, meta_s + s);
      ++issued;
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform

    const int pos0 = meta_s[stage];
    const bool is_column = pos0 < 0;
    // Block tile: keys pos0 .. pos0 + kKeys - 1. The warp skips it when all of them lie after its
    // last row (or before the document start of all its rows) and masks only when some lie after
    // its first row (or before some row's document start). Column chunks have arbitrary
    // positions and padding, so they are always masked.
    bool active = is_column || pos0 <= warp_q_last;
    const bool mask = is_column || pos0 + kKeys - 1 > warp_q0;
    bool document_mask = false;
    if constexpr (kDocumentMask) {
      active = active && (is_column || pos0 + kKeys > warp_key_start[C::kWarpRows]);
      document_mask = is_column || pos0 < warp_key_start[C::kWarpRows + 1];
    }
    if (active) {
      const uint32_t k_tile = k_lane + stage * kStageBytes;
      const uint32_t v_tile = v_lane + stage * kStageBytes;

      // S = Q K^T.
      float s[kMB][kKeyTiles][4];
#pragma unroll
      for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mb][n][e] = 0.f;
        }
      }
#pragma unroll
      for (int kk = 0; kk < kDSteps; ++kk) {
        uint32_t qa[kMB][4];
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb) {
          if constexpr (kQInRegisters) {
#pragma unroll
            for (int e = 0; e < 4; ++e) qa[mb][e] = q_frag[mb][kk][e];
          } else {
            ldmatrix_x4(qa[mb], q_lane + mb * 16 * kRowBytes + kk * 32);
          }
        }
#pragma unroll
        for (int np = 0; np < kKeyTiles / 2; ++np) {
          uint32_t kb[4];
          ldmatrix_x4(kb, k_tile + np * 16 * kRowBytes + kk * 32);
#pragma unroll
          for (int mb = 0; mb < kMB; ++mb) {
            mma_16816<Element>(s[mb][2 * np], qa[mb], kb[0], kb[1]);
            mma_16816<Element>(s[mb][2 * np + 1], qa[mb], kb[2], kb[3]);
          }
        }
      }

      // Causal mask kpos > qpos (raw scores; the scale is applied in the exponent).
      if (mask) {
        const int* kpos = kpos_s + stage * kKeys;
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n) {
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
          for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              if (key[e & 1] > warp_q0 + mb * 16 + g + (e >> 1) * 8) s[mb][n][e] = -INFINITY;
            }
          }
        }
      }
      // Document mask kpos < the row's first visible key, one row at a time so that a single key
      // start is live next to the scores.
      if (document_mask) {
        const int* kpos = kpos_s + stage * kKeys;
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const int start = warp_key_start[mb * 16 + g + r * 8];
#pragma unroll
            for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
              for (int j = 0; j < 2; ++j) {
                const int key = is_column ? kpos[n * 8 + 2 * t + j] : pos0 + n * 8 + 2 * t + j;
                if (key < start) s[mb][n][2 * r + j] = -INFINITY;
              }
            }
          }
        }
      }

      // Online softmax (FA2 Alg. 1, lines 9-10) in log2 units: P = exp2(S scale_log2 - max), one
      // FFMA and one MUFU per score. A row with no visible key so far keeps max -inf;
      // exponentiating against 0 instead of -inf then yields P = 0 and correction 0, never NaN.
#pragma unroll
      for (int mb = 0; mb < kMB; ++mb) {
        float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n) {
          tile_max[0] = fmaxf(tile_max[0], fmaxf(s[mb][n][0], s[mb][n][1]));
          tile_max[1] = fmaxf(tile_max[1], fmaxf(s[mb][n][2], s[mb][n][3]));
        }
        float neg_base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(kFullMask, tile_max[r], 1));
          tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(kFullMask, tile_max[r], 2));
          const float new_max = fmaxf(row_max[mb][r], tile_max[r] * scale_log2);
          const float base = new_max == -INFINITY ? 0.f : new_max;
          const float correction = exp2f(row_max[mb][r] - base);
          neg_base[r] = -base;
          row_max[mb][r] = new_max;
          row_sum[mb][r] *= correction;
#pragma unroll
          for (int dn = 0; dn < kDTiles; ++dn) {
            acc[mb][dn][2 * r] *= correction;
            acc[mb][dn][2 * r + 1] *= correction;
          }
        }
#pragma unroll
        for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            s[mb][n][e] = exp2f(fmaf(s[mb][n][e], scale_log2, neg_base[e >> 1]));
            row_sum[mb][e >> 1] += s[mb][n][e];
          }
        }
      }

      // O += P V. The S accumulators of n-tiles 2j, 2j + 1 are exactly the A fragment of k-step
      // j (keys 16j .. 16j + 15).
#pragma unroll
      for (int j = 0; j < kKeyTiles / 2; ++j) {
        uint32_t a[kMB][4];
#pragma unroll
        for (int mb = 0; mb < kMB; ++mb) {
          a[mb][0] = pack2<Element>(s[mb][2 * j][0], s[mb][2 * j][1]);
          a[mb][1] = pack2<Element>(s[mb][2 * j][2], s[mb][2 * j][3]);
          a[mb][2] = pack2<Element>(s[mb][2 * j + 1][0], s[mb][2 * j + 1][1]);
          a[mb][3] = pack2<Element>(s[mb][2 * j + 1][2], s[mb][2 * j + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < kDSteps; ++dp) {
          uint32_t vb[4];
          ldmatrix_x4_trans(vb, v_tile + j * 16 * kRowBytes + dp * 32);
#pragma unroll
          for (int mb = 0; mb < kMB; ++mb) {
            mma_16816<Element>(acc[mb][2 * dp], a[mb], vb[0], vb[1]);
            mma_16816<Element>(acc[mb][2 * dp + 1], a[mb], vb[2], vb[3]);
          }
        }
      }
    }

    // Resolve the tile after the one just issued here, where the latency of its index loads
    // overlaps the tail of this tile's mma instead of delaying the next copy.
    if (refill) pending = tiles.resolve(p, pending.it + 1);
    stage = stage == kStages - 1 ? 0 : stage + 1;
  }
  cp_async_wait<0>();

  // Epilogue: O / l and lse = max * ln 2 + ln l; empty rows get O = 0, lse = -inf.
  float inv_sum[kMB][2];
  float row_lse[kMB][2];
#pragma unroll
  for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float sum = row_sum[mb][r];
      sum += __shfl_xor_sync(kFullMask, sum, 1);
      sum += __shfl_xor_sync(kFullMask, sum, 2);
      const bool empty = row_max[mb][r] == -INFINITY;
      inv_sum[mb][r] = empty ? 0.f : 1.f / sum;
      row_lse[mb][r] = empty ? -INFINITY : row_max[mb][r] * kLn2 + logf(sum);
    }
  }

  // Stage the warp's output rows in its own rows of the Q tile (read by no other warp, and by
  // this one no more), then store them with coalesced 16-byte writes.
  __syncwarp();
  Element* o_s = q_s + warp * C::kWarpRows * S::kStride;
#pragma unroll
  for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
    for (int dn = 0; dn < kDTiles; ++dn) {
      const uint32_t top =
          pack2<Element>(acc[mb][dn][0] * inv_sum[mb][0], acc[mb][dn][1] * inv_sum[mb][0]);
      const uint32_t bottom =
          pack2<Element>(acc[mb][dn][2] * inv_sum[mb][1], acc[mb][dn][3] * inv_sum[mb][1]);
      *reinterpret_cast<uint32_t*>(o_s + (mb * 16 + g) * S::kStride + dn * 8 + 2 * t) = top;
      *reinterpret_cast<uint32_t*>(o_s + (mb * 16 + g + 8) * S::kStride + dn * 8 + 2 * t) = bottom;
    }
  }
  __syncwarp();
  Element* out_g =
      static_cast<Element*>(p.out) +
      (static_cast<int64_t>(b) * p.q_tokens + q_token0 + warp * C::kWarpRows) * q_token_stride +
      h * kHeadDim;
#pragma unroll
  for (int i = 0; i < C::kWarpRows * S::kChunksPerRow / 32; ++i) {
    const int c = lane + i * 32;
    const int r = c / S::kChunksPerRow;
    const int chunk = c % S::kChunksPerRow;
    *reinterpret_cast<uint4*>(out_g + r * q_token_stride + chunk * 8) =
        *reinterpret_cast<const uint4*>(o_s + r * S::kStride + chunk * 8);
  }
  if (t == 0) {
    float* lse_g = p.lse + (static_cast<int64_t>(b) * p.num_heads + h) * p.q_tokens + q_token0 +
                   warp * C::kWarpRows + g;
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) {
      lse_g[mb * 16] = row_lse[mb][0];
      lse_g[mb * 16 + 8] = row_lse[mb][1];
    }
  }
}

// ================================================================================================
// launcher
// ================================================================================================

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Requires C::kRows and C::kKeys to divide p.block_size.
template <typename Element, int kHeadDim, class C, bool kDocumentMask>
cudaError_t launch_forward(const SparseAttentionParams& p, cudaStream_t stream) {
  // With document masking the first visible key of each query row and each warp's smallest and
  // largest follow the tile metadata.
  constexpr int kSmem =
      ForwardSmem<Element, kHeadDim, C>::kBytes +
      (kDocumentMask ? C::kWarps * (C::kWarpRows + 2) * static_cast<int>(sizeof(int)) : 0);
  auto* kernel = sparse_attention_forward_kernel<Element, kHeadDim, C, kDocumentMask>;
  // Above 48 KB the dynamic shared-memory limit must be raised explicitly.
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.q_tokens / C::kRows, p.num_heads, p.batch);
  kernel<<<grid, C::kThreads, kSmem, stream>>>(p);
  return cudaGetLastError();
}

template <typename Element, class S, bool kDocumentMask>
cudaError_t launch_forward_wgmma(const SparseAttentionParams& p, cudaStream_t stream) {
  auto* kernel = sparse_attention_forward_wgmma_kernel<Element, S, kDocumentMask>;
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.q_tokens / S::kRows, p.num_heads, p.batch);
  kernel<<<grid, S::kThreads, S::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_forward_for_block(const SparseAttentionParams& p, cudaStream_t stream) {
  if (p.block_size == 128) {
    return launch_forward_wgmma<Element, FwdWgmmaShape<kHeadDim, 128>, kDocumentMask>(p, stream);
  }
  // 64-token blocks: at head dim 128 the wgmma kernel's three K/V stages (116 KB) leave room for
  // one 4-warp CTA per SM, where the mma.sync kernel (two stages, 88 KB) runs two.
  if constexpr (kHeadDim == 64) {
    return launch_forward_wgmma<Element, FwdWgmmaShape<kHeadDim, 64>, kDocumentMask>(p, stream);
  } else {
    return launch_forward<Element, kHeadDim, Config64, kDocumentMask>(p, stream);
  }
}

template <typename Element, int kHeadDim>
cudaError_t launch_forward_for_mask(const SparseAttentionParams& p, cudaStream_t stream) {
  return p.q_key_start != nullptr ? launch_forward_for_block<Element, kHeadDim, true>(p, stream)
                                  : launch_forward_for_block<Element, kHeadDim, false>(p, stream);
}

}  // namespace

cudaError_t validate_sparse_attention_params(const SparseAttentionParams& p) {
  if (p.head_dim != 64 && p.head_dim != 128) return cudaErrorInvalidValue;
  if (p.block_size != 64 && p.block_size != 128) return cudaErrorInvalidValue;
  if (p.batch < 0 || p.batch > 65535) return cudaErrorInvalidValue;
  if (p.num_heads <= 0 || p.num_heads > 65535 || p.num_kv_heads <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.num_heads % p.num_kv_heads != 0) return cudaErrorInvalidValue;
  if (p.q_tokens < 0 || p.q_tokens % p.block_size != 0) return cudaErrorInvalidValue;
  if (p.k_tokens < 0 || p.k_tokens % p.block_size != 0) return cudaErrorInvalidValue;
  if (p.element_type != ElementType::kBFloat16 && p.element_type != ElementType::kFloat16) {
    return cudaErrorInvalidValue;
  }
  if (!std::isfinite(p.softmax_scale)) return cudaErrorInvalidValue;
  if (p.batch == 0 || p.q_tokens == 0) return cudaSuccess;  // nothing will be read
  if (p.q == nullptr || p.q_block_ids == nullptr || p.block_row_offsets == nullptr ||
      p.column_row_offsets == nullptr || !aligned16(p.q)) {
    return cudaErrorInvalidValue;
  }
  if (p.k_tokens > 0 && (p.k == nullptr || p.v == nullptr || p.k_block_ids == nullptr ||
                         !aligned16(p.k) || !aligned16(p.v))) {
    return cudaErrorInvalidValue;
  }
  // The backward kernels stage key starts with 16-byte copies.
  if (p.q_key_start != nullptr && !aligned16(p.q_key_start)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

cudaError_t launch_sparse_attention_forward(const SparseAttentionParams& p, cudaStream_t stream) {
  const cudaError_t err = validate_sparse_attention_params(p);
  if (err != cudaSuccess) return err;
  if (p.batch == 0 || p.q_tokens == 0) return cudaSuccess;
  if (p.out == nullptr || p.lse == nullptr || !aligned16(p.out)) return cudaErrorInvalidValue;
  const bool bf16 = p.element_type == ElementType::kBFloat16;
  if (p.head_dim == 64) {
    return bf16 ? launch_forward_for_mask<__nv_bfloat16, 64>(p, stream)
                : launch_forward_for_mask<__half, 64>(p, stream);
  }
  return bf16 ? launch_forward_for_mask<__nv_bfloat16, 128>(p, stream)
              : launch_forward_for_mask<__half, 128>(p, stream);
}

}  // namespace sparsering::kernels

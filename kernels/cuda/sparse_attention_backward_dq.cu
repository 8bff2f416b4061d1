// The backward's per-query-tile kernel (see sparse_attention_backward.cu for the three
// schedules): dQ of a 64-row query tile in registers over the kv tiles the forward walks, and
// with kv accumulation the tile's dK/dV added into dk/dv with fp32 atomics; and the pre-pass every
// schedule needs, delta = rowsum(dO * O) per query row. (The delta kernel shares this file, and so
// the cubin, with a kernel that uses shared memory: that keeps its reserved shared memory, a
// per-module property, as it was.)
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "device_atomics.cuh"
#include "device_constants.cuh"
#include "device_convert.cuh"
#include "device_mask.cuh"
#include "device_ptx.cuh"
#include "sparse_attention_backward_dq_walk.cuh"
#include "sparse_attention_backward_launch.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {
namespace {

// Adds scale * acc (a warp's 16 x kHeadDim mma accumulator) into the rows ktok_rows[0..16) of an
// fp32 gradient with atomics, 4 values per lane and n-tile (pair_rows4); padding rows (token -1)
// are dropped. With vector4 (dst_head 16-byte aligned) one 16-byte atomic carries them, else two
// 8-byte ones; only the instruction differs, which keeps the register count of the caller.
template <int kDTiles>
__device__ __forceinline__ void scatter_add_rows(float* dst_head, int64_t token_stride,
                                                 const int* ktok_rows,
                                                 const float (&acc)[kDTiles][4], float scale, int g,
                                                 int t, bool vector4) {
  const bool odd = (t & 1) != 0;
  const int token = ktok_rows[g + (odd ? 8 : 0)];
  float* row = dst_head + max(token, 0) * token_stride + 2 * (t & ~1);
#pragma unroll
  for (int dn = 0; dn < kDTiles; ++dn) {
    const float4 value = pair_rows4(acc[dn], odd, scale);
    if (token < 0) continue;
    if (vector4) {
      atomic_add4(row + dn * 8, value);
    } else {
      atomic_add2(row + dn * 8, value.x, value.y);
      atomic_add2(row + dn * 8 + 2, value.z, value.w);
    }
  }
}

// P and dS of the query tile, [query][key], staged for the transposed products dV = P^T dO and
// dK = dS^T Q; padded by 16 bytes per row like the other tiles.
constexpr int kPStride = kTile + 8;

template <typename Element, int kHeadDim, bool kAccumulateKv, int kKvStages>
constexpr int dq_smem_bytes() {
  // Q, dO, kKvStages x (K, V) [, P, dS], kKvStages x kTile key positions and tokens.
  return (2 + 2 * kKvStages) * TileGeometry<kHeadDim>::kElems * static_cast<int>(sizeof(Element)) +
         (kAccumulateKv ? 2 * kTile * kPStride * static_cast<int>(sizeof(Element)) : 0) +
         2 * kKvStages * kTile * static_cast<int>(sizeof(int));
}

// Per query tile: dQ (and, with kAccumulateKv, atomically added dK/dV). Grid (q_tokens / 64,
// num_heads, batch), 128 threads. Fragment notation as in the forward: lane = 4 g + t, an
// accumulator holds rows g (c0, c1) and g + 8 (c2, c3), columns 2t, 2t + 1 of its n-tile.
// kKvStages is 2 (the next kv tile streams in during the current one) or 1 (the next tile is
// loaded after the current one; used where two buffers would leave room for only one CTA per SM,
// so that two CTAs overlap each other instead). kColumnsOnly visits the column chunks alone.
// kDocumentMask: p.q_key_start is set.
template <typename Element, int kHeadDim, bool kAccumulateKv, int kKvStages, bool kColumnsOnly,
          bool kDocumentMask>
__global__ void __launch_bounds__(kThreads)
    sparse_attention_backward_dq_kernel(const __grid_constant__ SparseAttentionBackwardParams bp) {
  using G = TileGeometry<kHeadDim>;
  constexpr int kDSteps = kHeadDim / 16;
  constexpr int kDTiles = kHeadDim / 8;
  constexpr int kKeyTiles = kTile / 8;
  const SparseAttentionParams& p = bp.forward;

  extern __shared__ __align__(16) unsigned char smem[];
  Element* q_s = reinterpret_cast<Element*>(smem);
  Element* do_s = q_s + G::kElems;
  Element* k_s = do_s + G::kElems;
  Element* v_s = k_s + kKvStages * G::kElems;
  Element* p_s = v_s + kKvStages * G::kElems;  // P and dS exist only with kAccumulateKv
  Element* ds_s = p_s + kTile * kPStride;
  int* kpos_s = reinterpret_cast<int*>(kAccumulateKv ? ds_s + kTile * kPStride : p_s);
  int* ktok_s = kpos_s + kKvStages * kTile;
  static_assert(kKvStages == 1 || kKvStages == 2, "one or two kv buffers");

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  // Reversed: under a causal pattern later query tiles attend more keys, so the largest CTAs are
  // scheduled first and the small ones fill the tail.
  const int q_tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q_token0 = q_tile * kTile;
  const int kvh = h / (p.num_heads / p.num_kv_heads);  // GQA
  const BackwardKeyTiles tiles = make_backward_key_tiles(p, b, h, q_tile, kColumnsOnly);
  int it = tiles.next(0);
  if (it >= tiles.num_tiles) return;  // attends nothing here: no gradient (CTA-uniform exit)

  const int64_t q_token_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const int64_t kv_token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const int64_t q_offset =
      (static_cast<int64_t>(b) * p.q_tokens + q_token0) * q_token_stride + h * kHeadDim;
  const Element* q_g = static_cast<const Element*>(p.q) + q_offset;
  const Element* do_g = static_cast<const Element*>(bp.dout) + q_offset;
  const int64_t kv_offset = static_cast<int64_t>(b) * p.k_tokens * kv_token_stride + kvh * kHeadDim;
  const Element* k_g = static_cast<const Element*>(p.k) + kv_offset;
  const Element* v_g = static_cast<const Element*>(p.v) + kv_offset;

  // Prologue: Q and dO (group 0) and the first kv tile (group 1) in flight together.
#pragma unroll
  for (int i = 0; i < G::kChunksPerThread; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / G::kChunksPerRow;
    const int chunk = c % G::kChunksPerRow;
    cp_async_16(q_s + r * G::kStride + chunk * 8, q_g + r * q_token_stride + chunk * 8, true);
    cp_async_16(do_s + r * G::kStride + chunk * 8, do_g + r * q_token_stride + chunk * 8, true);
  }
  cp_async_commit();
  load_backward_key_tile<Element, kHeadDim>(tiles, it, k_g, v_g, kv_token_stride, k_s, v_s, kpos_s,
                                            ktok_s);
  cp_async_commit();

  // Row statistics of rows g and g + 8. lse is kept in log2 units; a row whose lse is -inf
  // attended nothing anywhere and must get P = 0: lse2 = +inf makes exp2(s - lse2) = 0, not NaN.
  const int64_t stat_row =
      (static_cast<int64_t>(b) * p.num_heads + h) * p.q_tokens + q_token0 + warp * 16 + g;
  float lse2[2];
  float row_delta[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float lse = p.lse[stat_row + 8 * i];
    lse2[i] = lse == -INFINITY ? INFINITY : lse * kLog2e;
    row_delta[i] = bp.delta[stat_row + 8 * i];
  }

  float dq[kDTiles][4];
#pragma unroll
  for (int dn = 0; dn < kDTiles; ++dn) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dq[dn][e] = 0.f;
  }
  const float scale = p.softmax_scale;
  const float scale_log2 = scale * kLog2e;
  const int q_pos_g = tiles.q_pos0 + warp * 16 + g;
  // Document masking: the first visible key of rows g and g + 8, and the largest over the warp.
  int key_start[2] = {0, 0};
  int warp_start_max = 0;
  if constexpr (kDocumentMask) {
    const int32_t* starts =
        p.q_key_start + static_cast<int64_t>(b) * p.q_tokens + q_token0 + warp * 16 + g;
    key_start[0] = starts[0];
    key_start[1] = starts[8];
    warp_start_max = __reduce_max_sync(kFullMask, max(key_start[0], key_start[1]));
  }

  int stage = 0;
  while (it < tiles.num_tiles) {
    const int next = tiles.next(it + 1);
    const int next_stage = (stage + 1) % kKvStages;
    if (kKvStages == 2 && next < tiles.num_tiles) {
      load_backward_key_tile<Element, kHeadDim>(
          tiles, next, k_g, v_g, kv_token_stride, k_s + next_stage * G::kElems,
          v_s + next_stage * G::kElems, kpos_s + next_stage * kTile, ktok_s + next_stage * kTile);
    }
    // Possibly empty: keeps "all but the newest group" equal to "tile `it` and older" for wait<1>.
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    const Element* k_tile = k_s + stage * G::kElems;
    const Element* v_tile = v_s + stage * G::kElems;
    const int* kpos = kpos_s + stage * kTile;
    const int* ktok = ktok_s + stage * kTile;

    // S = Q K^T and dP = dO V^T: A from Q / dO rows of this warp; K and V are [key][d], the
    // "col" B operand, read with non-transposed ldmatrix (see the forward for the addressing).
    float s[kKeyTiles][4];
    float dpv[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = 0.f;
        dpv[n][e] = 0.f;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kDSteps; ++kk) {
      const int a_offset = (warp * 16 + lane % 16) * G::kStride + kk * 16 + (lane / 16) * 8;
      uint32_t qa[4];
      uint32_t da[4];
      ldmatrix_x4(qa, q_s + a_offset);
      ldmatrix_x4(da, do_s + a_offset);
#pragma unroll
      for (int np = 0; np < kKeyTiles / 2; ++np) {
        const int b_offset =
            (np * 16 + (lane / 16) * 8 + lane % 8) * G::kStride + kk * 16 + ((lane / 8) % 2) * 8;
        uint32_t kb[4];
        uint32_t vb[4];
        ldmatrix_x4(kb, k_tile + b_offset);
        ldmatrix_x4(vb, v_tile + b_offset);
        mma_16816<Element>(s[2 * np], qa, kb[0], kb[1]);
        mma_16816<Element>(s[2 * np + 1], qa, kb[2], kb[3]);
        mma_16816<Element>(dpv[2 * np], da, vb[0], vb[1]);
        mma_16816<Element>(dpv[2 * np + 1], da, vb[2], vb[3]);
      }
    }

    // P = exp(scale S - lse) with the causal (and document) mask; dS = P (dP - delta) (kept in
    // dpv). A block tile needs the document test only when it begins before some row's start.
    bool mask = tiles.needs_mask(it);
    if constexpr (kDocumentMask) mask = mask || tiles.block_pos0(it) < warp_start_max;
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool masked =
            mask && key_hidden<kDocumentMask>(kpos[n * 8 + 2 * t + (e & 1)], q_pos_g + (e >> 1) * 8,
                                              key_start[e >> 1]);
        const float prob = masked ? 0.f : exp2f(s[n][e] * scale_log2 - lse2[e >> 1]);
        s[n][e] = prob;
        dpv[n][e] = prob * (dpv[n][e] - row_delta[e >> 1]);
      }
    }

    if constexpr (kAccumulateKv) {
      Element* p_rows = p_s + (warp * 16 + g) * kPStride + 2 * t;
      Element* ds_rows = ds_s + (warp * 16 + g) * kPStride + 2 * t;
#pragma unroll
      for (int n = 0; n < kKeyTiles; ++n) {
        *reinterpret_cast<uint32_t*>(p_rows + n * 8) = pack2<Element>(s[n][0], s[n][1]);
        *reinterpret_cast<uint32_t*>(p_rows + 8 * kPStride + n * 8) =
            pack2<Element>(s[n][2], s[n][3]);
        *reinterpret_cast<uint32_t*>(ds_rows + n * 8) = pack2<Element>(dpv[n][0], dpv[n][1]);
        *reinterpret_cast<uint32_t*>(ds_rows + 8 * kPStride + n * 8) =
            pack2<Element>(dpv[n][2], dpv[n][3]);
      }
    }

    // dQ += dS K: dS accumulators of n-tiles 2j, 2j + 1 are the A fragment of k-step j; K is
    // [key][d] = [k][n], so B comes from a transposed ldmatrix.
#pragma unroll
    for (int j = 0; j < kKeyTiles / 2; ++j) {
      const uint32_t a[4] = {pack2<Element>(dpv[2 * j][0], dpv[2 * j][1]),
                             pack2<Element>(dpv[2 * j][2], dpv[2 * j][3]),
                             pack2<Element>(dpv[2 * j + 1][0], dpv[2 * j + 1][1]),
                             pack2<Element>(dpv[2 * j + 1][2], dpv[2 * j + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kDSteps; ++dp) {
        uint32_t kb[4];
        ldmatrix_x4_trans(kb, k_tile + (j * 16 + lane % 8 + ((lane / 8) % 2) * 8) * G::kStride +
                                  dp * 16 + (lane / 16) * 8);
        mma_16816<Element>(dq[2 * dp], a, kb[0], kb[1]);
        mma_16816<Element>(dq[2 * dp + 1], a, kb[2], kb[3]);
      }
    }

    if constexpr (kAccumulateKv) {
      __syncthreads();  // P and dS of all 64 query rows are in shared memory
      // Warp w forms keys 16w..16w+15 of dV = P^T dO and dK = scale dS^T Q, summing over the 64
      // query rows. A = P^T: transposed ldmatrix of P [query][key] (queries 16qq + lane % 8 +
      // 8 (lane / 16), keys 16w + 8 ((lane / 8) % 2)); B = dO or Q [query][d] = [k][n]:
      // transposed ldmatrix as for V in the forward.
      const int* ktok_rows = ktok + warp * 16;
      float kv[kDTiles][4];
#pragma unroll
      for (int which = 0; which < 2; ++which) {
        const Element* left = which == 0 ? p_s : ds_s;
        const Element* right = which == 0 ? do_s : q_s;
#pragma unroll
        for (int dn = 0; dn < kDTiles; ++dn) {
#pragma unroll
          for (int e = 0; e < 4; ++e) kv[dn][e] = 0.f;
        }
#pragma unroll
        for (int qq = 0; qq < kTile / 16; ++qq) {
          uint32_t a[4];
          ldmatrix_x4_trans(a, left + (qq * 16 + lane % 8 + (lane / 16) * 8) * kPStride +
                                   warp * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
          for (int dp = 0; dp < kDSteps; ++dp) {
            uint32_t rb[4];
            ldmatrix_x4_trans(rb, right + (qq * 16 + lane % 8 + ((lane / 8) % 2) * 8) * G::kStride +
                                      dp * 16 + (lane / 16) * 8);
            mma_16816<Element>(kv[2 * dp], a, rb[0], rb[1]);
            mma_16816<Element>(kv[2 * dp + 1], a, rb[2], rb[3]);
          }
        }
        float* dst = (which == 0 ? bp.dv : bp.dk) + kv_offset;
        // Alignment is tested here, per call: a flag held across the loop cost register spills.
        scatter_add_rows<kDTiles>(dst, kv_token_stride, ktok_rows, kv, which == 0 ? 1.f : scale, g,
                                  t, (reinterpret_cast<uintptr_t>(dst) & 15) == 0);
      }
    }

    __syncthreads();  // every warp is done with this stage (and P / dS) before they are refilled
    if (kKvStages == 1 && next < tiles.num_tiles) {
      load_backward_key_tile<Element, kHeadDim>(tiles, next, k_g, v_g, kv_token_stride, k_s, v_s,
                                                kpos_s, ktok_s);
      cp_async_commit();
    }
    stage = next_stage;
    it = next;
  }
  cp_async_wait<0>();

  // dq += scale dQ. This CTA alone owns these dq rows within this call, so no atomics.
  float* dq_g = bp.dq + q_offset + (warp * 16 + g) * q_token_stride;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int dn = 0; dn < kDTiles; ++dn) {
      float2* ptr = reinterpret_cast<float2*>(dq_g + 8 * i * q_token_stride + dn * 8 + 2 * t);
      float2 value = *ptr;
      value.x += scale * dq[dn][2 * i];
      value.y += scale * dq[dn][2 * i + 1];
      *ptr = value;
    }
  }
}

// delta[b, h, t] = sum_d dout * out. Groups of kHeadDim / 8 lanes (8 or 16, never straddling a
// warp) share one row, each lane one 16-byte chunk; the group reduces with shuffles.
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(256)
    attention_backward_delta_kernel(float* delta, const Element* dout, const Element* out,
                                    int tokens, int heads, int64_t rows) {
  constexpr int kLanes = kHeadDim / 8;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = thread / kLanes;  // (b * tokens + t) * heads + h
  const int chunk = static_cast<int>(thread % kLanes);
  float sum = 0.f;
  if (row < rows) {
    const uint4 a = *reinterpret_cast<const uint4*>(dout + row * kHeadDim + chunk * 8);
    const uint4 o = *reinterpret_cast<const uint4*>(out + row * kHeadDim + chunk * 8);
    sum = dot8<Element>(a, o);
  }
  // Every lane takes part (no early exit) so the full-mask shuffles are well defined.
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) {
    sum += __shfl_xor_sync(kFullMask, sum, offset);
  }
  if (row < rows && chunk == 0) {
    const int64_t b = row / (static_cast<int64_t>(tokens) * heads);
    const int64_t t = (row / heads) % tokens;
    const int64_t h = row % heads;
    delta[(b * heads + h) * tokens + t] = sum;
  }
}

template <typename Element, int kHeadDim>
cudaError_t launch_delta(float* delta, const void* dout, const void* out, int tokens, int heads,
                         int64_t rows, cudaStream_t stream) {
  constexpr int kBlock = 256;
  const int64_t threads = rows * (kHeadDim / 8);
  const int64_t blocks = (threads + kBlock - 1) / kBlock;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  attention_backward_delta_kernel<Element, kHeadDim>
      <<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
          delta, static_cast<const Element*>(dout), static_cast<const Element*>(out), tokens, heads,
          rows);
  return cudaGetLastError();
}

}  // namespace

// Per-query-tile kernel with atomically added dK/dV, over everything or over the columns alone.
template <typename Element, int kHeadDim, bool kColumnsOnly, bool kDocumentMask>
cudaError_t launch_query_major(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  const dim3 q_grid(p.q_tokens / kTile, p.num_heads, p.batch);
  // With P/dS staging, double-buffered K/V at head_dim 128 would need 121 KB: one CTA per SM.
  // A single buffer (86.5 KB) lets two CTAs share an SM.
  constexpr int kKvStages = kHeadDim == 128 ? 1 : 2;
  return launch(sparse_attention_backward_dq_kernel<Element, kHeadDim, true, kKvStages,
                                                    kColumnsOnly, kDocumentMask>,
                q_grid, dq_smem_bytes<Element, kHeadDim, true, kKvStages>(), stream, bp);
}

template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_deterministic_dq(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  const dim3 q_grid(p.q_tokens / kTile, p.num_heads, p.batch);
  return launch(
      sparse_attention_backward_dq_kernel<Element, kHeadDim, false, 2, false, kDocumentMask>,
      q_grid, dq_smem_bytes<Element, kHeadDim, false, 2>(), stream, bp);
}

#define SPARSERING_INSTANTIATE(Element, kHeadDim, kDocumentMask)                    \
  template cudaError_t launch_query_major<Element, kHeadDim, false, kDocumentMask>( \
      const SparseAttentionBackwardParams&, cudaStream_t);                          \
  template cudaError_t launch_query_major<Element, kHeadDim, true, kDocumentMask>(  \
      const SparseAttentionBackwardParams&, cudaStream_t);                          \
  template cudaError_t launch_deterministic_dq<Element, kHeadDim, kDocumentMask>(   \
      const SparseAttentionBackwardParams&, cudaStream_t);
SPARSERING_BACKWARD_VARIANTS(SPARSERING_INSTANTIATE)
#undef SPARSERING_INSTANTIATE

cudaError_t launch_attention_backward_delta(float* delta, const void* dout, const void* out,
                                            ElementType type, int batch, int tokens, int heads,
                                            int head_dim, cudaStream_t stream) {
  if (head_dim != 64 && head_dim != 128) return cudaErrorInvalidValue;
  if (type != ElementType::kBFloat16 && type != ElementType::kFloat16) {
    return cudaErrorInvalidValue;
  }
  if (batch < 0 || tokens < 0 || heads < 0) return cudaErrorInvalidValue;
  const int64_t rows = static_cast<int64_t>(batch) * tokens * heads;
  if (rows == 0) return cudaSuccess;
  if (delta == nullptr || dout == nullptr || out == nullptr || !aligned(dout, 16) ||
      !aligned(out, 16)) {
    return cudaErrorInvalidValue;
  }
  const bool bf16 = type == ElementType::kBFloat16;
  if (head_dim == 64) {
    return bf16 ? launch_delta<__nv_bfloat16, 64>(delta, dout, out, tokens, heads, rows, stream)
                : launch_delta<__half, 64>(delta, dout, out, tokens, heads, rows, stream);
  }
  return bf16 ? launch_delta<__nv_bfloat16, 128>(delta, dout, out, tokens, heads, rows, stream)
              : launch_delta<__half, 128>(delta, dout, out, tokens, heads, rows, stream);
}

}  // namespace sparsering::kernels

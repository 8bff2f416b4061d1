// Block-sparse flash attention backward on the vertical-slash index of sparse_attention_params.h.
//
// Gradients of FlashAttention-2 (Dao 2023, Alg. 2), with P recomputed from the saved (final) lse:
//   S = scale Q K^T, P = exp(S - lse), dV = P^T dO, dP = dO V^T, dS = P (dP - delta),
//   dQ = scale dS K, dK = scale dS^T Q,   delta = rowsum(dO * O).
// Three kernels:
//  - per kv block (non-deterministic default, FlashAttention-2's schedule): one CTA of
//    block_size / 16 warps per kv block and kv head walks the transposed block index (all query
//    heads of the GQA group), keeps dK/dV in registers and writes them once without atomics; the
//    dQ partial of each (query tile, kv block) pair goes through shared memory (dS) and is added
//    into dq with fp32 vector atomics. That is one atomic tile per pair instead of two (dK and dV)
//    and, with 128-key blocks, half as many pairs. FlashAttention-2's warp layout (32-row warp
//    tiles, P and dS staged in shared memory; see accumulate_block_gradients) reads 30% fewer
//    shared-memory bytes than 16-key warps would. Vertical columns are scattered single keys, so
//    they keep the per-query-tile schedule below (gathered 64-key chunks) in a second pass.
//  - per query tile: one CTA of 4 warps per 64-row query tile walks the same kv tiles as the
//    forward (active-block sub-tiles, then gathered column chunks) and keeps dQ in registers.
//    With kv accumulation it also forms the tile's dK/dV (P and dS go through shared memory to be
//    transposed) and adds them into dk/dv with fp32 atomics, scattering the rows of a gathered
//    column chunk back to their tokens. Non-deterministic mode runs it over the columns only, or
//    over everything when the caller gives no transposed index; deterministic mode runs it for
//    dQ alone.
//  - per kv tile (deterministic mode): one CTA per 64-key tile and kv head walks the transposed
//    index, keeps dK/dV in registers and writes them without atomics. Vertical columns come from
//    the transposed column index, turned into one masked 64-key tile per query block (see
//    sparse_attention_backward_dkdv_kernel).
// Matrix products use mma.sync.m16n8k16 with ldmatrix operands; streamed tiles are
// double-buffered with cp.async (single-buffered where that doubles the CTAs per SM).
// Document masking (p.q_key_start) is a template flag of every kernel, so the unmasked
// instantiations compile as before: keys before a query's first visible key get P = 0 in the same
// test as the causal rule. The per-query-tile kernel keeps its rows' key starts in registers; the
// per-kv-tile kernels stage each query tile's key starts in shared memory with its lse and delta.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "sparse_attention_cuda.h"
#include "wgmma.cuh"

namespace sparsering::kernels {
namespace {

// ================================================================================================
// kernels
// ================================================================================================

// The device helpers below up to make_key_tiles are the same as in sparse_attention_forward.cu.

constexpr int kTile = 64;  // query rows per tile and keys per kv tile
constexpr int kWarps = 4;  // each warp owns 16 rows (query rows, or keys in the dK/dV kernel)
constexpr int kThreads = kWarps * 32;
// Shared-memory buffers of the streamed tiles (cp.async double buffering). The dQ kernel takes its
// own count as a template parameter (see launch_backward).
constexpr int kStages = 2;
constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFullMask = 0xffffffffu;

// Shared-memory tile of kTile rows x kHeadDim elements. Each row is padded by 16 bytes so that the
// 8 row addresses of one ldmatrix 8x8 matrix fall into 8 distinct 16-byte bank groups.
template <int kHeadDim>
struct TileGeometry {
  static constexpr int kStride = kHeadDim + 8;  // elements between rows
  static constexpr int kElems = kTile * kStride;
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  static constexpr int kChunksPerThread = kTile * kChunksPerRow / kThreads;
  static_assert(kTile * kChunksPerRow % kThreads == 0, "tile copy must split evenly");
};

__device__ __forceinline__ uint32_t smem_address(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// 16-byte global -> shared copy that bypasses L1; when !valid the destination is zero-filled
// (src-size 0), which keeps padded rows of a gathered column chunk finite for the P V product.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)),
               "l"(gmem), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most kPending of this thread's committed copy groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem)));
}

// d += a * b for one m16n8k16 tile, fp32 accumulators.
template <typename Element>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats -> one register of two elements; `lo` lands in the low half (the lower column).
template <typename Element>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  uint32_t r;
  memcpy(&r, &v, sizeof(r));
  return r;
}

// The kv tiles one query tile visits, in order: the kTile-key sub-tiles of its active blocks
// (block_size / kTile per block), then its vertical columns in chunks of kTile. Block tiles whose
// first key lies after the tile's last query are causally empty and skipped by next().
struct KeyTiles {
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
__device__ __forceinline__ KeyTiles make_key_tiles(const SparseAttentionParams& p, int b, int h,
                                                   int q_tile, bool columns_only) {
  const int tiles_per_block = p.block_size / kTile;
  const int qb = q_tile / tiles_per_block;
  const int64_t row =
      (static_cast<int64_t>(b) * p.num_heads + h) * (p.q_tokens / p.block_size) + qb;
  const int block_begin = p.block_row_offsets[row];
  const int block_end = p.block_row_offsets[row + 1];
  const int column_begin = p.column_row_offsets[row];
  const int column_end = p.column_row_offsets[row + 1];
  KeyTiles tiles;
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

// Two packed elements -> two floats (`lo` is the low half).
template <typename Element>
__device__ __forceinline__ float2 unpack2(uint32_t v);

template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t v) {
  __nv_bfloat162 x;
  memcpy(&x, &v, sizeof(x));
  return __bfloat1622float2(x);
}

template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t v) {
  __half2 x;
  memcpy(&x, &v, sizeof(x));
  return __half22float2(x);
}

// Sum of the products of 8 element pairs held in two 16-byte words.
template <typename Element>
__device__ __forceinline__ float dot8(const uint4& a, const uint4& b) {
  const uint32_t wa[4] = {a.x, a.y, a.z, a.w};
  const uint32_t wb[4] = {b.x, b.y, b.z, b.w};
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = unpack2<Element>(wa[i]);
    const float2 y = unpack2<Element>(wb[i]);
    sum = fmaf(x.x, y.x, sum);
    sum = fmaf(x.y, y.y, sum);
  }
  return sum;
}

// ptr[0..1] += (x, y) atomically: one vector atomic on sm_90, two scalar ones before.
__device__ __forceinline__ void atomic_add2(float* ptr, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(ptr), make_float2(x, y));
#else
  atomicAdd(ptr, x);
  atomicAdd(ptr + 1, y);
#endif
}

// As in the forward, plus the local token of every key (-1 for padding) so that dK/dV rows of a
// gathered column chunk can be scattered back.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void load_key_tile(const KeyTiles& tiles, int it, const Element* k_head,
                                              const Element* v_head, int64_t token_stride,
                                              Element* k_dst, Element* v_dst, int* kpos_dst,
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

// For 16-byte atomics on an mma accumulator n-tile c (rows g: c0, c1 and g + 8: c2, c3, columns
// 2t, 2t + 1): lanes t and t ^ 1 swap halves, so that an even lane returns columns 2t .. 2t + 3
// of row g and an odd lane columns 2t - 2 .. 2t + 1 of row g + 8, times scale. Halves the atomic
// instructions against the L2. Every lane of the warp must call it.
__device__ __forceinline__ float4 pair_rows4(const float (&c)[4], bool odd, float scale) {
  const float recv0 = __shfl_xor_sync(kFullMask, odd ? c[0] : c[2], 1);
  const float recv1 = __shfl_xor_sync(kFullMask, odd ? c[1] : c[3], 1);
  return odd ? make_float4(scale * recv0, scale * recv1, scale * c[2], scale * c[3])
             : make_float4(scale * c[0], scale * c[1], scale * recv0, scale * recv1);
}

// ptr[0..3] += v atomically (ptr 16-byte aligned): one vector atomic on sm_90, two before.
__device__ __forceinline__ void atomic_add4(float* ptr, const float4& v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float4*>(ptr), v);
#else
  atomic_add2(ptr, v.x, v.y);
  atomic_add2(ptr + 2, v.z, v.w);
#endif
}

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
    sparse_attention_backward_dq_kernel(const SparseAttentionBackwardParams bp) {
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
  const KeyTiles tiles = make_key_tiles(p, b, h, q_tile, kColumnsOnly);
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
  load_key_tile<Element, kHeadDim>(tiles, it, k_g, v_g, kv_token_stride, k_s, v_s, kpos_s, ktok_s);
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
      load_key_tile<Element, kHeadDim>(tiles, next, k_g, v_g, kv_token_stride,
                                       k_s + next_stage * G::kElems, v_s + next_stage * G::kElems,
                                       kpos_s + next_stage * kTile, ktok_s + next_stage * kTile);
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
        bool masked;
        if constexpr (kDocumentMask) {
          const int key_pos = kpos[n * 8 + 2 * t + (e & 1)];
          masked = mask && (key_pos > q_pos_g + (e >> 1) * 8 || key_pos < key_start[e >> 1]);
        } else {
          masked = mask && kpos[n * 8 + 2 * t + (e & 1)] > q_pos_g + (e >> 1) * 8;
        }
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
      load_key_tile<Element, kHeadDim>(tiles, next, k_g, v_g, kv_token_stride, k_s, v_s, kpos_s,
                                       ktok_s);
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
__global__ void __launch_bounds__(kThreads)
    sparse_attention_backward_dkdv_kernel(const SparseAttentionBackwardParams bp) {
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
  const int64_t kv_offset =
      (static_cast<int64_t>(b) * p.k_tokens + k_token0) * kv_token_stride + kvh * kHeadDim;
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
              masked = key_pos > q_pos || key_pos < key_start;
            } else {
              masked = mask && key_pos > q_pos;
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
    sparse_attention_backward_kv_kernel(const SparseAttentionBackwardParams bp) {
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
  const int64_t kv_offset =
      (static_cast<int64_t>(b) * p.k_tokens + k_tile * kKeys) * kv_token_stride + kvh * kHeadDim;
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

#include "sparse_attention_backward_wgmma.cuh"

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

// ================================================================================================
// launcher
// ================================================================================================

bool aligned(const void* ptr, uintptr_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

// Raises the dynamic shared-memory limit (needed above 48 KB) and launches.
template <typename Kernel>
cudaError_t launch(Kernel* kernel, dim3 grid, int smem_bytes, cudaStream_t stream,
                   const SparseAttentionBackwardParams& p, int threads = kThreads) {
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
  if (err != cudaSuccess) return err;
  kernel<<<grid, threads, smem_bytes, stream>>>(p);
  return cudaGetLastError();
}

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

// Non-deterministic backward on the transposed index: active blocks per kv tile of kKeys keys
// (dQ by atomics), then the vertical columns per query tile (dK/dV by atomics). The two kernels
// touch dk/dv and dq in stream order, so the plain read-modify-writes of each are safe.
template <typename Element, int kHeadDim, int kKeys, bool kDocumentMask>
cudaError_t launch_kv_major(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  if (p.k_tokens > 0) {
    const dim3 kv_grid(p.k_tokens / kKeys, p.num_kv_heads, p.batch);
    if constexpr (kHeadDim == kWgmmaHeadDim && kKeys == kWgmmaKeys) {
      const cudaError_t err =
          launch(sparse_attention_backward_kv_wgmma_kernel<Element, kDocumentMask>, kv_grid,
                 kv_wgmma_smem_bytes<kDocumentMask>(), stream, bp, kWgmmaThreads);
      if (err != cudaSuccess) return err;
    } else {
      const cudaError_t err = launch(
          sparse_attention_backward_kv_kernel<Element, kHeadDim, kKeys, kDocumentMask>, kv_grid,
          kv_smem_bytes<Element, kHeadDim, kKeys, kDocumentMask>(), stream, bp, 2 * kKeys);
      if (err != cudaSuccess) return err;
    }
  }
  return launch_query_major<Element, kHeadDim, true, kDocumentMask>(bp, stream);
}

template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_backward(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  const dim3 q_grid(p.q_tokens / kTile, p.num_heads, p.batch);
  if (!bp.deterministic) {
    // The per-kv-tile schedule needs the transposed block index and 16-byte aligned lse/delta
    // (cp.async) and dq (vector atomics); without them, the query-major schedule does everything.
    if (bp.t_block_row_offsets == nullptr || !aligned(p.lse, 16) || !aligned(bp.delta, 16) ||
        !aligned(bp.dq, 16)) {
      return launch_query_major<Element, kHeadDim, false, kDocumentMask>(bp, stream);
    }
    // 128-key tiles (8 warps) halve the dQ atomics and the Q/dO reloads per key against 64.
    return p.block_size == 128 ? launch_kv_major<Element, kHeadDim, 128, kDocumentMask>(bp, stream)
                               : launch_kv_major<Element, kHeadDim, 64, kDocumentMask>(bp, stream);
  }
  const cudaError_t err =
      launch(sparse_attention_backward_dq_kernel<Element, kHeadDim, false, 2, false, kDocumentMask>,
             q_grid, dq_smem_bytes<Element, kHeadDim, false, 2>(), stream, bp);
  if (err != cudaSuccess || p.k_tokens == 0) return err;
  const dim3 kv_grid(p.k_tokens / kTile, p.num_kv_heads, p.batch);
  return launch(sparse_attention_backward_dkdv_kernel<Element, kHeadDim, kDocumentMask>, kv_grid,
                dkdv_smem_bytes<Element, kHeadDim, kDocumentMask>(), stream, bp);
}

template <typename Element, int kHeadDim>
cudaError_t launch_backward_for_mask(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  return bp.forward.q_key_start != nullptr ? launch_backward<Element, kHeadDim, true>(bp, stream)
                                           : launch_backward<Element, kHeadDim, false>(bp, stream);
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

cudaError_t launch_sparse_attention_backward(const SparseAttentionBackwardParams& bp,
                                             cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  const cudaError_t err = validate_sparse_attention_params(p);
  if (err != cudaSuccess) return err;
  if (p.batch == 0 || p.q_tokens == 0) return cudaSuccess;  // no query: no gradient
  if (p.lse == nullptr || bp.dout == nullptr || bp.delta == nullptr || bp.dq == nullptr ||
      !aligned(bp.dout, 16) || !aligned(bp.dq, 8)) {
    return cudaErrorInvalidValue;
  }
  if (p.k_tokens > 0 &&
      (bp.dk == nullptr || bp.dv == nullptr || !aligned(bp.dk, 8) || !aligned(bp.dv, 8))) {
    return cudaErrorInvalidValue;
  }
  if (bp.deterministic && p.k_tokens > 0 &&
      (bp.t_block_row_offsets == nullptr || bp.t_column_row_offsets == nullptr ||
       !aligned(p.lse, 16) || !aligned(bp.delta, 16))) {
    return cudaErrorInvalidValue;
  }
  const bool bf16 = p.element_type == ElementType::kBFloat16;
  if (p.head_dim == 64) {
    return bf16 ? launch_backward_for_mask<__nv_bfloat16, 64>(bp, stream)
                : launch_backward_for_mask<__half, 64>(bp, stream);
  }
  return bf16 ? launch_backward_for_mask<__nv_bfloat16, 128>(bp, stream)
              : launch_backward_for_mask<__half, 128>(bp, stream);
}

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

// Block-sparse flash attention forward on the vertical-slash index of sparse_attention_params.h.
//
// Schedule of FlashAttention-2 (Dao 2023, Alg. 1): one CTA of 4 warps per 64-row query tile, each
// warp owning 16 query rows; the CTA walks the kv tiles of its CSR row (64-key sub-tiles of the
// active blocks, then the vertical columns gathered 64 at a time) with an online softmax in fp32.
// Q K^T and P V run on tensor cores via mma.sync.m16n8k16 with operands loaded by ldmatrix; K/V
// tiles are double-buffered with cp.async so the next tile streams in during the current one.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "sparse_attention_cuda.h"

namespace sparsering::kernels {
namespace {

// ================================================================================================
// kernels
// ================================================================================================

constexpr int kTile = 64;  // query rows per CTA and keys per kv tile
constexpr int kWarps = 4;  // each warp owns 16 query rows: one m16 row block of the mma
constexpr int kThreads = kWarps * 32;
constexpr int kStages = 2;  // K/V shared-memory buffers (cp.async double buffering)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
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

template <typename Element, int kHeadDim>
constexpr int forward_smem_bytes() {
  // Q tile, kStages x (K tile, V tile), kStages x kTile key positions.
  return (1 + 2 * kStages) * TileGeometry<kHeadDim>::kElems * static_cast<int>(sizeof(Element)) +
         kStages * kTile * static_cast<int>(sizeof(int));
}

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

__device__ __forceinline__ KeyTiles make_key_tiles(const SparseAttentionParams& p, int b, int h,
                                                   int q_tile) {
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
  tiles.num_block_tiles = (block_end - block_begin) * tiles_per_block;
  tiles.num_columns = column_end - column_begin;
  tiles.num_tiles = tiles.num_block_tiles + (tiles.num_columns + kTile - 1) / kTile;
  tiles.q_pos0 = p.q_block_ids[qb] * p.block_size + (q_tile % tiles_per_block) * kTile;
  return tiles;
}

// Copies kv tile `it` into shared memory (cp.async, not committed) and writes the global position
// of each of its keys to kpos_dst; padding rows of a partial column chunk are zero-filled and get
// position INT_MAX so that the causal test masks them.
template <typename Element, int kHeadDim>
__device__ __forceinline__ void load_key_tile(const KeyTiles& tiles, int it, const Element* k_head,
                                              const Element* v_head, int64_t token_stride,
                                              Element* k_dst, Element* v_dst, int* kpos_dst) {
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
    }
  }
}

// Grid (q_tokens / 64, num_heads, batch), 128 threads. Fragment notation of mma.m16n8k16: lane =
// 4 * g + t; an accumulator c[4] holds rows g (c0, c1) and g + 8 (c2, c3), columns 2t and 2t + 1
// of its 8-column n-tile.
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kThreads)
    sparse_attention_forward_kernel(const SparseAttentionParams p) {
  using G = TileGeometry<kHeadDim>;
  constexpr int kDSteps = kHeadDim / 16;  // k-steps of Q K^T, pairs of n-tiles of P V
  constexpr int kDTiles = kHeadDim / 8;   // n-tiles of the output
  constexpr int kKeyTiles = kTile / 8;    // n-tiles of S

  extern __shared__ __align__(16) unsigned char smem[];
  Element* q_s = reinterpret_cast<Element*>(smem);
  Element* k_s = q_s + G::kElems;
  Element* v_s = k_s + kStages * G::kElems;
  int* kpos_s = reinterpret_cast<int*>(v_s + kStages * G::kElems);

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int q_tile = blockIdx.x;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int q_token0 = q_tile * kTile;
  const int kvh = h / (p.num_heads / p.num_kv_heads);  // GQA
  const KeyTiles tiles = make_key_tiles(p, b, h, q_tile);

  const int64_t q_token_stride = static_cast<int64_t>(p.num_heads) * kHeadDim;
  const int64_t kv_token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const Element* q_g = static_cast<const Element*>(p.q) +
                       (static_cast<int64_t>(b) * p.q_tokens + q_token0) * q_token_stride +
                       h * kHeadDim;
  const int64_t kv_offset = static_cast<int64_t>(b) * p.k_tokens * kv_token_stride + kvh * kHeadDim;
  const Element* k_g = static_cast<const Element*>(p.k) + kv_offset;
  const Element* v_g = static_cast<const Element*>(p.v) + kv_offset;

  // Prologue: Q tile (group 0) and the first kv tile (group 1) in flight together.
#pragma unroll
  for (int i = 0; i < G::kChunksPerThread; ++i) {
    const int c = static_cast<int>(threadIdx.x) + i * kThreads;
    const int r = c / G::kChunksPerRow;
    const int chunk = c % G::kChunksPerRow;
    cp_async_16(q_s + r * G::kStride + chunk * 8, q_g + r * q_token_stride + chunk * 8, true);
  }
  cp_async_commit();
  int it = tiles.next(0);
  if (it < tiles.num_tiles) {
    load_key_tile<Element, kHeadDim>(tiles, it, k_g, v_g, kv_token_stride, k_s, v_s, kpos_s);
  }
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();

  // Q stays in registers as mma A fragments: rows lane % 16, columns 8 * (lane / 16) of each
  // 16x16 block give a0..a3 in ldmatrix order.
  uint32_t q_frag[kDSteps][4];
#pragma unroll
  for (int kk = 0; kk < kDSteps; ++kk) {
    ldmatrix_x4(q_frag[kk], q_s + (warp * 16 + lane % 16) * G::kStride + kk * 16 + (lane / 16) * 8);
  }

  float acc[kDTiles][4];
#pragma unroll
  for (int dn = 0; dn < kDTiles; ++dn) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[dn][e] = 0.f;
  }
  // Running max (of log2-scaled scores) and this thread's partial row sums, rows g and g + 8.
  float row_max[2] = {-INFINITY, -INFINITY};
  float row_sum[2] = {0.f, 0.f};
  const float scale_log2 = p.softmax_scale * kLog2e;
  const int q_pos_g = tiles.q_pos0 + warp * 16 + g;

  int stage = 0;
  while (it < tiles.num_tiles) {
    const int next = tiles.next(it + 1);
    if (next < tiles.num_tiles) {
      load_key_tile<Element, kHeadDim>(tiles, next, k_g, v_g, kv_token_stride,
                                       k_s + (stage ^ 1) * G::kElems, v_s + (stage ^ 1) * G::kElems,
                                       kpos_s + (stage ^ 1) * kTile);
    }
    cp_async_commit();  // possibly empty: keeps the group count uniform for wait<1>
    cp_async_wait<1>();
    __syncthreads();

    const Element* k_tile = k_s + stage * G::kElems;
    const Element* v_tile = v_s + stage * G::kElems;
    const int* kpos = kpos_s + stage * kTile;

    // S = Q K^T. K is stored [key][d], i.e. the "col" B operand: non-transposed ldmatrix of
    // keys 16np + 8 (lane / 16) + lane % 8, dims 16kk + 8 ((lane / 8) % 2) gives b0, b1 of
    // n-tile 2np and b0, b1 of n-tile 2np + 1.
    float s[kKeyTiles][4];
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < kDSteps; ++kk) {
#pragma unroll
      for (int np = 0; np < kKeyTiles / 2; ++np) {
        uint32_t kb[4];
        ldmatrix_x4(kb, k_tile + (np * 16 + (lane / 16) * 8 + lane % 8) * G::kStride + kk * 16 +
                            ((lane / 8) % 2) * 8);
        mma_16816<Element>(s[2 * np], q_frag[kk], kb[0], kb[1]);
        mma_16816<Element>(s[2 * np + 1], q_frag[kk], kb[2], kb[3]);
      }
    }

    // Scale into log2 units (exp2f below, as FA2) and apply the causal mask kpos > qpos.
    const bool mask = tiles.needs_mask(it);
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[n][e] * scale_log2;
        if (mask && kpos[n * 8 + 2 * t + (e & 1)] > q_pos_g + (e >> 1) * 8) x = -INFINITY;
        s[n][e] = x;
      }
    }

    // Online softmax (FA2 Alg. 1, lines 9-10). A row with no visible key so far keeps max -inf;
    // exponentiating against 0 instead of -inf then yields P = 0 and correction 0, never NaN.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
      tile_max[0] = fmaxf(tile_max[0], fmaxf(s[n][0], s[n][1]));
      tile_max[1] = fmaxf(tile_max[1], fmaxf(s[n][2], s[n][3]));
    }
    float base[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(kFullMask, tile_max[i], 1));
      tile_max[i] = fmaxf(tile_max[i], __shfl_xor_sync(kFullMask, tile_max[i], 2));
      const float new_max = fmaxf(row_max[i], tile_max[i]);
      base[i] = new_max == -INFINITY ? 0.f : new_max;
      const float correction = exp2f(row_max[i] - base[i]);
      row_max[i] = new_max;
      row_sum[i] *= correction;
#pragma unroll
      for (int dn = 0; dn < kDTiles; ++dn) {
        acc[dn][2 * i] *= correction;
        acc[dn][2 * i + 1] *= correction;
      }
    }
#pragma unroll
    for (int n = 0; n < kKeyTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(s[n][e] - base[e >> 1]);
        row_sum[e >> 1] += s[n][e];
      }
    }

    // O += P V. The S accumulators of n-tiles 2j, 2j + 1 are exactly the A fragment of k-step j
    // (keys 16j..16j+15). V is stored [key][d] = [k][n], so B comes from a transposed ldmatrix:
    // keys 16j + lane % 8 + 8 ((lane / 8) % 2), dims 16dp + 8 (lane / 16).
#pragma unroll
    for (int j = 0; j < kKeyTiles / 2; ++j) {
      const uint32_t a[4] = {pack2<Element>(s[2 * j][0], s[2 * j][1]),
                             pack2<Element>(s[2 * j][2], s[2 * j][3]),
                             pack2<Element>(s[2 * j + 1][0], s[2 * j + 1][1]),
                             pack2<Element>(s[2 * j + 1][2], s[2 * j + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kDSteps; ++dp) {
        uint32_t vb[4];
        ldmatrix_x4_trans(vb, v_tile + (j * 16 + lane % 8 + ((lane / 8) % 2) * 8) * G::kStride +
                                  dp * 16 + (lane / 16) * 8);
        mma_16816<Element>(acc[2 * dp], a, vb[0], vb[1]);
        mma_16816<Element>(acc[2 * dp + 1], a, vb[2], vb[3]);
      }
    }

    __syncthreads();  // every warp is done with this stage before it is refilled
    stage ^= 1;
    it = next;
  }
  cp_async_wait<0>();
  __syncthreads();

  // Epilogue: O / l and lse = max * ln 2 + ln l; empty rows get O = 0, lse = -inf.
  float inv_sum[2];
  float row_lse[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    row_sum[i] += __shfl_xor_sync(kFullMask, row_sum[i], 1);
    row_sum[i] += __shfl_xor_sync(kFullMask, row_sum[i], 2);
    const bool empty = row_max[i] == -INFINITY;
    inv_sum[i] = empty ? 0.f : 1.f / row_sum[i];
    row_lse[i] = empty ? -INFINITY : row_max[i] * kLn2 + logf(row_sum[i]);
  }

  // Stage the warp's 16 output rows in its own (no longer needed) rows of the Q tile, then store
  // them with coalesced 16-byte writes.
  Element* o_s = q_s + warp * 16 * G::kStride;
#pragma unroll
  for (int dn = 0; dn < kDTiles; ++dn) {
    const uint32_t top = pack2<Element>(acc[dn][0] * inv_sum[0], acc[dn][1] * inv_sum[0]);
    const uint32_t bottom = pack2<Element>(acc[dn][2] * inv_sum[1], acc[dn][3] * inv_sum[1]);
    *reinterpret_cast<uint32_t*>(o_s + g * G::kStride + dn * 8 + 2 * t) = top;
    *reinterpret_cast<uint32_t*>(o_s + (g + 8) * G::kStride + dn * 8 + 2 * t) = bottom;
  }
  __syncwarp();
  Element* out_g = static_cast<Element*>(p.out) +
                   (static_cast<int64_t>(b) * p.q_tokens + q_token0 + warp * 16) * q_token_stride +
                   h * kHeadDim;
#pragma unroll
  for (int i = 0; i < 16 * G::kChunksPerRow / 32; ++i) {
    const int c = lane + i * 32;
    const int r = c / G::kChunksPerRow;
    const int chunk = c % G::kChunksPerRow;
    *reinterpret_cast<uint4*>(out_g + r * q_token_stride + chunk * 8) =
        *reinterpret_cast<const uint4*>(o_s + r * G::kStride + chunk * 8);
  }
  if (t == 0) {
    float* lse_g =
        p.lse + (static_cast<int64_t>(b) * p.num_heads + h) * p.q_tokens + q_token0 + warp * 16 + g;
    lse_g[0] = row_lse[0];
    lse_g[8] = row_lse[1];
  }
}

// ================================================================================================
// launcher
// ================================================================================================

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename Element, int kHeadDim>
cudaError_t launch_forward(const SparseAttentionParams& p, cudaStream_t stream) {
  constexpr int kSmem = forward_smem_bytes<Element, kHeadDim>();
  auto* kernel = sparse_attention_forward_kernel<Element, kHeadDim>;
  // Above 48 KB the dynamic shared-memory limit must be raised explicitly.
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.q_tokens / kTile, p.num_heads, p.batch);
  kernel<<<grid, kThreads, kSmem, stream>>>(p);
  return cudaGetLastError();
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
  return cudaSuccess;
}

cudaError_t sparse_attention_forward(const SparseAttentionParams& p, cudaStream_t stream) {
  const cudaError_t err = validate_sparse_attention_params(p);
  if (err != cudaSuccess) return err;
  if (p.batch == 0 || p.q_tokens == 0) return cudaSuccess;
  if (p.out == nullptr || p.lse == nullptr || !aligned16(p.out)) return cudaErrorInvalidValue;
  const bool bf16 = p.element_type == ElementType::kBFloat16;
  if (p.head_dim == 64) {
    return bf16 ? launch_forward<__nv_bfloat16, 64>(p, stream)
                : launch_forward<__half, 64>(p, stream);
  }
  return bf16 ? launch_forward<__nv_bfloat16, 128>(p, stream)
              : launch_forward<__half, 128>(p, stream);
}

}  // namespace sparsering::kernels

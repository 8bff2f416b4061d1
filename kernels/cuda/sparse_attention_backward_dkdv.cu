// The backward's deterministic dK/dV kernel over the active blocks (see
// sparse_attention_backward.cu for the schedules): one CTA per 64-key tile walks the transposed
// block index and adds its dK/dV without atomics, in a fixed order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "sparse_attention_backward_dkdv_tile.cuh"
#include "sparse_attention_backward_kv_major.cuh"
#include "sparse_attention_backward_launch.cuh"
#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {
namespace {

// Deterministic dK/dV per kv tile over the active blocks. Grid (k_tokens / 64, num_kv_heads,
// batch), 128 threads; warp w owns keys 16w..16w+15 and computes transposed products with the keys
// as mma rows:
//   S^T = K Q^T, P^T = exp(scale S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - delta),
//   dV += P^T dO, dK += dS^T Q,
// so P^T and dS^T feed the second products straight from registers. Query tiles come from the
// transposed block index (all keys attended), in ascending entry order, and every sum has a fixed
// order: the result is bitwise reproducible. The vertical columns are a second kernel
// (sparse_attention_backward_dkdv_columns.cu) that adds into the same rows afterwards.
template <typename Element, int kHeadDim, bool kDocumentMask>
__global__ void __launch_bounds__(kThreads) sparse_attention_backward_dkdv_kernel(
    const __grid_constant__ SparseAttentionBackwardParams bp) {
  constexpr int kDTiles = kHeadDim / 8;
  const SparseAttentionParams& p = bp.forward;
  extern __shared__ __align__(16) unsigned char smem[];
  const DkdvSmem<Element, kHeadDim> sm = dkdv_smem_frame<Element, kHeadDim, kDocumentMask>(smem);

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int g = (static_cast<int>(threadIdx.x) % 32) / 4;
  const int k_tile = blockIdx.x;
  const int kvh = blockIdx.y;
  const int b = blockIdx.z;
  const QueryTiles tiles = transposed_block_tiles<kTile>(bp, k_tile, kvh, b);
  if (tiles.next(0) >= tiles.num_tiles) return;  // CTA-uniform

  const int64_t kv_token_stride = static_cast<int64_t>(p.num_kv_heads) * kHeadDim;
  const int64_t kv_offset = kv_tile_offset<kHeadDim, kTile>(p, kv_token_stride, k_tile, kvh, b);
  // K and V stay resident; their copy group completes inside accumulate_dkdv's first wait.
  load_kv_tile<Element, kHeadDim, kTile, kThreads>(p, kv_offset, sm.k, sm.v);

  float dk[kDTiles][4];
  float dv[kDTiles][4];
  zero_dkdv<kHeadDim>(dk, dv);
  const int key_pos[2] = {tiles.k_pos0 + warp * 16 + g, tiles.k_pos0 + warp * 16 + g + 8};
  accumulate_dkdv<Element, kHeadDim, kDocumentMask>(tiles, bp, b, sm, key_pos, dk, dv);

  const int64_t row_offset[2] = {kv_offset + (warp * 16 + g) * kv_token_stride,
                                 kv_offset + (warp * 16 + g + 8) * kv_token_stride};
  add_dkdv_rows<kHeadDim>(dk, dv, p.softmax_scale, row_offset, bp.dk, bp.dv);
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

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
//    block index, keeps dK/dV in registers and writes them without atomics. Then one CTA per
//    chunk of 64 gathered column keys walks their transposed column rows the same way, each query
//    block as one tile masked to the chunk keys it attends, and adds into those keys' rows.
// Matrix products use mma.sync.m16n8k16 with ldmatrix operands; streamed tiles are
// double-buffered with cp.async (single-buffered where that doubles the CTAs per SM).
// Document masking (p.q_key_start) is a template flag of every kernel, so the unmasked
// instantiations compile as before: keys before a query's first visible key get P = 0 in the same
// test as the causal rule. The per-query-tile kernel keeps its rows' key starts in registers; the
// per-kv-tile kernels stage each query tile's key starts in shared memory with its lse and delta.
//
// Files: the per-query-tile kernel and the delta pre-pass in sparse_attention_backward_dq.cu, the
// per-kv-block kernels in sparse_attention_backward_kv.cu (mma.sync) and
// sparse_attention_backward_wgmma.cuh (wgmma), the deterministic per-kv-tile kernels in
// sparse_attention_backward_dkdv.cu (active blocks) and sparse_attention_backward_dkdv_columns.cu
// (gathered column keys); this file holds the launcher, which picks the schedule.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sparse_attention_backward_launch.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {
namespace {

// Non-deterministic backward on the transposed index: active blocks per kv tile of kKeys keys
// (dQ by atomics), then the vertical columns per query tile (dK/dV by atomics). The two kernels
// touch dk/dv and dq in stream order, so the plain read-modify-writes of each are safe.
template <typename Element, int kHeadDim, int kKeys, bool kDocumentMask>
cudaError_t launch_kv_major(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  if (p.k_tokens > 0) {
    const cudaError_t err = launch_kv_blocks<Element, kHeadDim, kKeys, kDocumentMask>(bp, stream);
    if (err != cudaSuccess) return err;
  }
  return launch_query_major<Element, kHeadDim, true, kDocumentMask>(bp, stream);
}

template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_backward(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  const SparseAttentionParams& p = bp.forward;
  if (!bp.deterministic) {
    // The per-kv-tile schedule needs the transposed block index and 16-byte aligned lse/delta
    // (cp.async) and dq (vector atomics); without them, the query-major schedule does everything.
    if (bp.t_block_row_offsets == nullptr || !aligned(p.lse, 16) || !aligned(bp.delta, 16) ||
        !aligned(bp.dq, 16)) {
      return launch_query_major<Element, kHeadDim, false, kDocumentMask>(bp, stream);
    }
    // 128-key tiles (the wgmma kernel) halve the dQ atomics and the Q/dO reloads per key
    // against 64.
    return p.block_size == 128 ? launch_kv_major<Element, kHeadDim, 128, kDocumentMask>(bp, stream)
                               : launch_kv_major<Element, kHeadDim, 64, kDocumentMask>(bp, stream);
  }
  cudaError_t err = launch_deterministic_dq<Element, kHeadDim, kDocumentMask>(bp, stream);
  if (err != cudaSuccess || p.k_tokens == 0) return err;
  err = launch_deterministic_dkdv<Element, kHeadDim, kDocumentMask>(bp, stream);
  if (err != cudaSuccess) return err;
  return launch_deterministic_dkdv_columns<Element, kHeadDim, kDocumentMask>(bp, stream);
}

template <typename Element, int kHeadDim>
cudaError_t launch_backward_for_mask(const SparseAttentionBackwardParams& bp, cudaStream_t stream) {
  return bp.forward.q_key_start != nullptr ? launch_backward<Element, kHeadDim, true>(bp, stream)
                                           : launch_backward<Element, kHeadDim, false>(bp, stream);
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
       bp.t_column_key_capacity < 0 || bp.t_column_key_capacity % kColumnKeyChunk != 0 ||
       (bp.t_column_key_capacity > 0 && bp.t_column_keys == nullptr) || !aligned(p.lse, 16) ||
       !aligned(bp.delta, 16))) {
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

}  // namespace sparsering::kernels

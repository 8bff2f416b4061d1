// Launch plumbing shared by the backward's kernel files and its launcher
// (sparse_attention_backward.cu): each kernel file launches its own kernels, so that a kernel
// and the templates that instantiate it stay in one translation unit.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "sparse_attention_backward_tiles.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {

inline bool aligned(const void* ptr, uintptr_t bytes) {
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

// Per-query-tile kernel with atomically added dK/dV, over everything or over the columns alone
// (sparse_attention_backward_dq.cu).
template <typename Element, int kHeadDim, bool kColumnsOnly, bool kDocumentMask>
cudaError_t launch_query_major(const SparseAttentionBackwardParams& bp, cudaStream_t stream);

// Deterministic mode: dQ per query tile (sparse_attention_backward_dq.cu), then dK/dV per kv tile
// of the active blocks (sparse_attention_backward_dkdv.cu), then dK/dV per chunk of gathered
// column keys added into the same rows (sparse_attention_backward_dkdv_columns.cu).
template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_deterministic_dq(const SparseAttentionBackwardParams& bp, cudaStream_t stream);
template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_deterministic_dkdv(const SparseAttentionBackwardParams& bp, cudaStream_t stream);
template <typename Element, int kHeadDim, bool kDocumentMask>
cudaError_t launch_deterministic_dkdv_columns(const SparseAttentionBackwardParams& bp,
                                              cudaStream_t stream);

// Non-deterministic dK/dV/dQ of the active blocks per kv tile of kKeys keys
// (sparse_attention_backward_kv.cu; the wgmma kernel where it applies).
template <typename Element, int kHeadDim, int kKeys, bool kDocumentMask>
cudaError_t launch_kv_blocks(const SparseAttentionBackwardParams& bp, cudaStream_t stream);

// The (element, head dim, document mask) variants the launcher dispatches to: every kernel file
// instantiates its launch functions for each, since the launcher sees only their declarations.
#define SPARSERING_BACKWARD_VARIANTS(X) \
  X(__nv_bfloat16, 64, false)           \
  X(__nv_bfloat16, 64, true)            \
  X(__nv_bfloat16, 128, false)          \
  X(__nv_bfloat16, 128, true)           \
  X(__half, 64, false)                  \
  X(__half, 64, true)                   \
  X(__half, 128, false)                 \
  X(__half, 128, true)

}  // namespace sparsering::kernels

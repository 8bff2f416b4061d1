// Cross-entropy of one row of logits per CTA: loss and the gradient of the logits in one read
// pass plus one read-and-write pass. The torch op sequence it replaces (cast to fp32, logsumexp,
// gather, exp, scatter_add, multiply, cast back) moves the [tokens, vocab] logits through HBM
// about ten times; here the second read of a row (64 KiB at a 16K vocabulary) mostly hits L2.
//
//   1. Each thread keeps an online (max, sum of exp) over its strided share of the row; a warp
//      and then a block reduction combine them into the row's logsumexp.
//   2. loss = lse - row[label]; when a gradient is asked for, every element is rewritten as
//      (exp(x - lse) - [j == label]) * grad_scale in the gradient's dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "cross_entropy_cuda.h"
#include "device_constants.cuh"

namespace sparsering::kernels {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;

struct MaxSum {
  float max;  // -inf while empty
  float sum;  // sum of exp(x - max)
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0f};
  return {m, a.sum * exp2f((a.max - m) * kLog2e) + b.sum * exp2f((b.max - m) * kLog2e)};
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half(x);
}

template <typename Grad>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_rows_kernel(const __grid_constant__ CrossEntropyRowsParams p) {
  __shared__ MaxSum warp_partials[kWarps];
  __shared__ float row_lse;
  const int64_t row = blockIdx.x;
  const float* __restrict__ x = p.logits + row * p.vocab;

  MaxSum mine{-INFINITY, 0.0f};
  for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) {
    const float v = __ldg(x + j);
    if (v > mine.max) {
      mine.sum = mine.sum * exp2f((mine.max - v) * kLog2e) + 1.0f;
      mine.max = v;
    } else if (v != -INFINITY) {  // -inf adds nothing (and -inf - -inf would be NaN); NaN stays
      mine.sum += exp2f((v - mine.max) * kLog2e);
    }
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const MaxSum other{__shfl_xor_sync(kFullMask, mine.max, offset),
                       __shfl_xor_sync(kFullMask, mine.sum, offset)};
    mine = combine(mine, other);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_partials[warp] = mine;
  __syncthreads();
  if (warp == 0) {
    MaxSum total = lane < kWarps ? warp_partials[lane] : MaxSum{-INFINITY, 0.0f};
    for (int offset = 16; offset > 0; offset /= 2) {
      const MaxSum other{__shfl_xor_sync(kFullMask, total.max, offset),
                         __shfl_xor_sync(kFullMask, total.sum, offset)};
      total = combine(total, other);
    }
    if (lane == 0) {
      // A NaN in the row, or two +inf, gives a NaN lse (one +inf gives +inf); the loss and
      // gradient carry it on.
      const float lse = total.max + logf(total.sum);
      row_lse = lse;
      const int64_t label = p.labels[row];
      // As the twin: no loss for an ignored row, NaN for a label outside the vocabulary.
      p.losses[row] = label == p.ignore_label         ? 0.0f
                      : label >= 0 && label < p.vocab ? lse - x[label]
                                                      : __int_as_float(0x7fc00000);
    }
  }
  if (p.grad == nullptr) return;
  __syncthreads();
  const float lse = row_lse;
  const int64_t label = p.labels[row];
  Grad* __restrict__ g = static_cast<Grad*>(p.grad) + row * p.vocab;
  if (label == p.ignore_label) {
    for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) g[j] = from_float<Grad>(0.0f);
    return;
  }
  for (int64_t j = threadIdx.x; j < p.vocab; j += kThreads) {
    const float probability = exp2f((__ldg(x + j) - lse) * kLog2e);
    g[j] = from_float<Grad>((probability - (j == label ? 1.0f : 0.0f)) * p.grad_scale);
  }
}

}  // namespace

cudaError_t launch_cross_entropy_rows(const CrossEntropyRowsParams& p, cudaStream_t stream) {
  if (p.logits == nullptr || p.labels == nullptr || p.losses == nullptr || p.vocab < 1 ||
      p.rows < 0 || p.rows > INT32_MAX)
    return cudaErrorInvalidValue;
  if (p.rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.rows));
  switch (p.grad_element) {
    case GradElement::kFloat32:
      cross_entropy_rows_kernel<float><<<grid, kThreads, 0, stream>>>(p);
      break;
    case GradElement::kBFloat16:
      cross_entropy_rows_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(p);
      break;
    case GradElement::kFloat16:
      cross_entropy_rows_kernel<__half><<<grid, kThreads, 0, stream>>>(p);
      break;
  }
  return cudaGetLastError();
}

}  // namespace sparsering::kernels

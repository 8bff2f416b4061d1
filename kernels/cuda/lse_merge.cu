// Log-sum-exp merge of one partial attention result (one ring step) into the fp32 accumulator:
//   lse = max + log(exp(l1 - max) + exp(l2 - max)),  out = exp(l1 - lse) o1 + exp(l2 - lse) o2.
// Memory-bound: each thread owns one 16-byte chunk (8 elements) of a row of out_part and the
// matching 32 bytes of out_acc; the lanes of one row fetch its two lse values once.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>
#include <cstdint>

#include "device_constants.cuh"
#include "device_convert.cuh"
#include "sparse_attention_cuda.h"

namespace sparsering::kernels {
namespace {

// ================================================================================================
// kernels
// ================================================================================================

constexpr int kBlock = 256;

// w1 o1 + w2 o2, where a side with weight 0 (empty, or its exponential underflowed) is dropped
// rather than multiplied, so that whatever its output holds cannot turn into NaN.
__device__ __forceinline__ float mix(float o1, float o2, float w1, float w2) {
  return (w1 != 0.f ? w1 * o1 : 0.f) + (w2 != 0.f ? w2 * o2 : 0.f);
}

// Groups of kHeadDim / 8 lanes (8 or 16; a group never straddles a warp) handle one row
// (b, t, h); rows are ordered like out_acc, [batch, tokens, heads].
template <typename Element, int kHeadDim>
__global__ void __launch_bounds__(kBlock)
    lse_merge_kernel(float* out_acc, float* lse_acc, const Element* out_part, const float* lse_part,
                     int tokens, int heads, int64_t rows) {
  constexpr int kLanes = kHeadDim / 8;
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t row = thread / kLanes;
  const int chunk = static_cast<int>(thread % kLanes);
  const bool active = row < rows;

  // The group leader reads both lse values and broadcasts them, so that its later write of the
  // merged lse cannot race with a read by another lane of the row. All lanes reach the shuffles.
  int64_t lse_index = 0;
  float l1 = -INFINITY;
  float l2 = -INFINITY;
  if (active) {
    const int64_t b = row / (static_cast<int64_t>(tokens) * heads);
    const int64_t t = (row / heads) % tokens;
    const int64_t h = row % heads;
    lse_index = (b * heads + h) * tokens + t;
    if (chunk == 0) {
      l1 = lse_acc[lse_index];
      l2 = lse_part[lse_index];
    }
  }
  l1 = __shfl_sync(kFullMask, l1, 0, kLanes);
  l2 = __shfl_sync(kFullMask, l2, 0, kLanes);
  if (!active) return;

  const float hi = fmaxf(l1, l2);
  if (hi == -INFINITY) return;  // both sides empty: lse stays -inf, out_acc unchanged
  const float lo = fminf(l1, l2);
  // One of the two exponentials is exactly 1: log(1 + exp(lo - hi)); lo = -inf gives hi.
  const float merged = hi + log1pf(expf(lo - hi));
  const float w1 = l1 == -INFINITY ? 0.f : expf(l1 - merged);
  const float w2 = l2 == -INFINITY ? 0.f : expf(l2 - merged);

  const int64_t offset = row * kHeadDim + chunk * 8;
  float4* acc = reinterpret_cast<float4*>(out_acc + offset);
  const uint4 part = *reinterpret_cast<const uint4*>(out_part + offset);
  const float2 p0 = unpack2<Element>(part.x);
  const float2 p1 = unpack2<Element>(part.y);
  const float2 p2 = unpack2<Element>(part.z);
  const float2 p3 = unpack2<Element>(part.w);
  float4 a0 = acc[0];
  float4 a1 = acc[1];
  a0.x = mix(a0.x, p0.x, w1, w2);
  a0.y = mix(a0.y, p0.y, w1, w2);
  a0.z = mix(a0.z, p1.x, w1, w2);
  a0.w = mix(a0.w, p1.y, w1, w2);
  a1.x = mix(a1.x, p2.x, w1, w2);
  a1.y = mix(a1.y, p2.y, w1, w2);
  a1.z = mix(a1.z, p3.x, w1, w2);
  a1.w = mix(a1.w, p3.y, w1, w2);
  acc[0] = a0;
  acc[1] = a1;
  if (chunk == 0) lse_acc[lse_index] = merged;
}

// ================================================================================================
// launcher
// ================================================================================================

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

template <typename Element, int kHeadDim>
cudaError_t launch_merge(float* out_acc, float* lse_acc, const void* out_part,
                         const float* lse_part, int tokens, int heads, int64_t rows,
                         cudaStream_t stream) {
  const int64_t threads = rows * (kHeadDim / 8);
  const int64_t blocks = (threads + kBlock - 1) / kBlock;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  lse_merge_kernel<Element, kHeadDim><<<static_cast<unsigned>(blocks), kBlock, 0, stream>>>(
      out_acc, lse_acc, static_cast<const Element*>(out_part), lse_part, tokens, heads, rows);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_lse_merge(float* out_acc, float* lse_acc, const void* out_part,
                             const float* lse_part, ElementType type, int batch, int tokens,
                             int heads, int head_dim, cudaStream_t stream) {
  if (head_dim != 64 && head_dim != 128) return cudaErrorInvalidValue;
  if (type != ElementType::kBFloat16 && type != ElementType::kFloat16) {
    return cudaErrorInvalidValue;
  }
  if (batch < 0 || tokens < 0 || heads < 0) return cudaErrorInvalidValue;
  const int64_t rows = static_cast<int64_t>(batch) * tokens * heads;
  if (rows == 0) return cudaSuccess;
  if (out_acc == nullptr || lse_acc == nullptr || out_part == nullptr || lse_part == nullptr ||
      !aligned16(out_acc) || !aligned16(out_part)) {
    return cudaErrorInvalidValue;
  }
  const bool bf16 = type == ElementType::kBFloat16;
  if (head_dim == 64) {
    return bf16 ? launch_merge<__nv_bfloat16, 64>(out_acc, lse_acc, out_part, lse_part, tokens,
                                                  heads, rows, stream)
                : launch_merge<__half, 64>(out_acc, lse_acc, out_part, lse_part, tokens, heads,
                                           rows, stream);
  }
  return bf16 ? launch_merge<__nv_bfloat16, 128>(out_acc, lse_acc, out_part, lse_part, tokens,
                                                 heads, rows, stream)
              : launch_merge<__half, 128>(out_acc, lse_acc, out_part, lse_part, tokens, heads, rows,
                                          stream);
}

}  // namespace sparsering::kernels

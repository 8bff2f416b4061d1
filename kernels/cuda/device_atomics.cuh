// fp32 gradient accumulation with vector atomics: one 8- or 16-byte atomic per 2 or 4 values
// halves or quarters the atomic instructions against the L2.
#pragma once

#include "device_constants.cuh"

namespace sparsering::kernels {

// ptr[0..1] += (x, y) atomically: one vector atomic on sm_90, two scalar ones before.
__device__ __forceinline__ void atomic_add2(float* ptr, float x, float y) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  atomicAdd(reinterpret_cast<float2*>(ptr), make_float2(x, y));
#else
  atomicAdd(ptr, x);
  atomicAdd(ptr + 1, y);
#endif
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

}  // namespace sparsering::kernels

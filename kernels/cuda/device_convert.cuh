// Conversions between fp32 and packed pairs of 16-bit elements (bf16 or fp16, the kernels'
// Element), and a dot product over two 16-byte words of such pairs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace sparsering::kernels {

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

}  // namespace sparsering::kernels

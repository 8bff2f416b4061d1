// The online-softmax pair of the estimation kernels (attention_mass.cu, sampled_attention_mass.cu):
// a row's running max and sum of exp(l - max) (Milakov & Gimelshein 2018), and how two partial
// pairs combine.
#pragma once

#include <cmath>

namespace sparsering::kernels {

struct MaxSum {
  float max;
  float sum;  // of exp(l - max)
};

// Combines two partial (max, sum) pairs. A side with max = -inf has sum = 0 and drops out; when
// both do, the result stays (-inf, 0) instead of the NaN of exp(-inf - (-inf)).
__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float max = fmaxf(a.max, b.max);
  if (max == -INFINITY) return {-INFINITY, 0.f};
  return {max, a.sum * __expf(a.max - max) + b.sum * __expf(b.max - max)};
}

}  // namespace sparsering::kernels

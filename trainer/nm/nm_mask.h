// N:M masks of linear weights (docs/algorithms.md, 4.1): a weight [out, in] is cut into groups
// of M consecutive input weights of one row and the N of largest magnitude in each group are kept.
// Groups run along the input (reduction) dimension, the layout sparse tensor cores expect for 2:4.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace sparsering::trainer {

// Boolean mask shaped like `weight` [out, in] (in % m == 0) with exactly `n` true entries in every
// group of `m` consecutive input weights: the n largest |w|. Equal magnitudes go to the lower input
// index, so identical weights give identical masks on every rank and device without any
// communication. Computed without autograd; `weight` may have any floating dtype.
at::Tensor nm_keep_mask(const at::Tensor& weight, int64_t n, int64_t m);

// The strictly N:M weight: `weight` where `keep_mask` is true, exactly zero elsewhere.
at::Tensor apply_keep_mask(const at::Tensor& weight, const at::Tensor& keep_mask);

}  // namespace sparsering::trainer

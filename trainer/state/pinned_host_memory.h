// Page-locked host tensors at their exact size, for the optimizer state that
// optimizer.offload=CPU keeps on the host.
//
// torch's pinned allocator (at::empty(..., pinned_memory(true))) rounds every request up to a
// power of two and caches it: a Llama-3-8B-sized model's 96 GB of fp32 masters and moments would
// take about 120 GiB of page-locked memory, more than its host may have. These tensors own a
// cudaHostAlloc block of exactly their size, freed with the tensor.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace sparsering::trainer {

// A zero-filled 1-D host tensor of `numel` elements; page-locked when `pin` is set and this build
// has CUDA, else ordinary host memory. Throws std::runtime_error naming the size when the host
// cannot lock that much memory.
at::Tensor exact_pinned_zeros(int64_t numel, at::ScalarType dtype, bool pin);

}  // namespace sparsering::trainer

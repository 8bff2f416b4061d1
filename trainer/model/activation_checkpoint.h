// Activation checkpointing (LibTorch C++ has none): run a block without keeping its activations
// and recompute it in the backward pass.
#pragma once

#include <ATen/ATen.h>

#include <functional>

namespace sparsering::trainer {

using BlockFunction = std::function<at::Tensor(const at::Tensor&)>;

// Returns forward(input) with no graph inside the block. In backward, recompute(input) runs again
// with gradients on and is backpropagated, which accumulates the block's parameter gradients and
// yields the input's; then `after_backward` (if set) runs, when the block's parameter gradients of
// this backward are complete. `recompute` must compute what `forward` did (e.g. reuse its sparse
// pattern).
at::Tensor checkpoint(BlockFunction forward, BlockFunction recompute, const at::Tensor& input,
                      std::function<void()> after_backward = nullptr);

}  // namespace sparsering::trainer

// Ring steps whose mask is plain under the dense pattern, so a fused dense kernel (cuDNN) can run
// them: a shard against itself is causal over its local tokens when its blocks ascend (every
// layout's do), and keys wholly before every query are all visible. Everything else (zigzag's and
// the balanced layout's interleaved pairs, sparse patterns, documents) needs the block-sparse
// kernels.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "kernels/cudnn_attention.h"

namespace sparsering::parallel {

// The plain mask of the dense-pattern step of queries in blocks `q_block_ids` against keys in
// `k_block_ids` (global block ids, int32 or int64), or nullopt.
std::optional<kernels::PlainMask> plain_mask(const at::Tensor& q_block_ids,
                                             const at::Tensor& k_block_ids);

// (query block, key block) pairs with the key block at or before the query block: the dense
// pattern's work between two shards, in blocks.
int64_t causal_block_pairs(const at::Tensor& q_block_ids, const at::Tensor& k_block_ids);

}  // namespace sparsering::parallel

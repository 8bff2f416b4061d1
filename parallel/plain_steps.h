// Ring steps whose mask is plain under the dense pattern, so a fused dense kernel (cuDNN) can run
// them. A step's query and key shards are runs of consecutive global blocks; every pair of runs is
// then either empty, fully visible (keys wholly before the queries) or causal (a run against
// itself). A shard against itself is causal as a whole (blocks ascend in every layout);
// contiguous steps are one full rectangle; zigzag's cross steps are one or two full rectangles.
// Steps of many short runs (the balanced layout's stripes) or runs that overlap partly go to the
// block-sparse kernels, as do sparse patterns and documents.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "kernels/cudnn_attention.h"

namespace sparsering::parallel {

// Local query tokens [q_begin, q_end) against local key tokens [k_begin, k_end) under `mask`.
struct PlainPart {
  int64_t q_begin = 0, q_end = 0, k_begin = 0, k_end = 0;
  kernels::PlainMask mask = kernels::PlainMask::kFull;
};

// More parts than this make small cuDNN calls that lose to one block-sparse launch.
constexpr size_t kMaxPlainParts = 4;

// The dense-pattern step of queries in blocks `q_block_ids` against keys in `k_block_ids` (global
// block ids, int32 or int64, `block_size` tokens each) as plain parts that cover every visible
// pair once (none when nothing is visible), or nullopt when it does not split into at most
// kMaxPlainParts of them.
std::optional<std::vector<PlainPart>> plain_parts(const at::Tensor& q_block_ids,
                                                  const at::Tensor& k_block_ids,
                                                  int64_t block_size);

// (query block, key block) pairs with the key block at or before the query block: the dense
// pattern's work between two shards, in blocks.
int64_t causal_block_pairs(const at::Tensor& q_block_ids, const at::Tensor& k_block_ids);

}  // namespace sparsering::parallel

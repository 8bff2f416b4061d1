// The all-to-all of head-parallel (Ulysses) context parallelism, as differentiable ops.
//
// A head-parallel group is u consecutive context-parallel ranks. Before attention each rank holds
// all heads of its own tokens; heads_to_tokens gives rank i heads [i H/u, (i+1) H/u) of the
// tokens of every rank of the group, concatenated in rank order, so attention over the ring of
// cp / u groups sees u times the tokens and 1/u of the heads. tokens_to_heads is its inverse (the
// attention output goes back the same way), and each op's backward is the other op.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "parallel/communicator.h"

namespace sparsering::parallel {

// [batch, local, heads, dim] -> [batch, u x local, heads / u, dim] over `group` (size u).
at::Tensor heads_to_tokens(const at::Tensor& x, Communicator& group);
// [batch, u x local, heads / u, dim] -> [batch, local, heads, dim]: the inverse.
at::Tensor tokens_to_heads(const at::Tensor& x, Communicator& group);
// Times each K/V head is repeated before the exchange over u ranks: 1 when u divides kv_heads,
// else u / gcd(kv_heads, u), the fewest that make the count divisible by u.
int64_t kv_head_repeat(int64_t kv_heads, int64_t u);
// [batch, local, ...] of every rank of `group`, concatenated along dimension 1 in rank order
// (document starts, which every head shares; not differentiable).
at::Tensor gather_tokens(const at::Tensor& x, Communicator& group);

}  // namespace sparsering::parallel

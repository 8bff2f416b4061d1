// One CSR row of a kernel's index (sparse_attention_params.h): where the active kv blocks and the
// vertical columns of one (sequence, head, query block) lie in p.block_cols and p.column_indices.
// Shared by the forward's and the backward's per-query-tile walks.
#pragma once

#include <cstdint>

#include "sparse_attention_cuda.h"

namespace sparsering::kernels {

struct IndexRow {
  int block_begin, block_end;    // p.block_cols[block_begin .. block_end)
  int column_begin, column_end;  // p.column_indices[column_begin .. column_end)
};

__device__ __forceinline__ IndexRow index_row(const SparseAttentionParams& p, int b, int h,
                                              int qb) {
  const int64_t row =
      (static_cast<int64_t>(b) * p.num_heads + h) * (p.q_tokens / p.block_size) + qb;
  return {p.block_row_offsets[row], p.block_row_offsets[row + 1], p.column_row_offsets[row],
          p.column_row_offsets[row + 1]};
}

}  // namespace sparsering::kernels

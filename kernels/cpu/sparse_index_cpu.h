// Reference twin of the index-building kernels (kernels/cuda/sparse_index.cu), on ATen ops:
// boolean masks [batch, heads, q_blocks, k_blocks] and [batch, heads, q_blocks, columns] compacted
// by masked_select, which keeps row-major order. Runs on any device; the CPU path of
// build_sparse_index.
#pragma once

#include "kernels/sparse_index.h"

namespace sparsering::kernels::cpu {

// Rows of blocks and columns, and with transposed_blocks the transposed blocks (the transposed
// columns are left undefined: build_sparse_index adds them from the column rows).
SparseIndex sparse_index_cpu(const SparseIndexInputs& in, bool transposed_blocks);

}  // namespace sparsering::kernels::cpu

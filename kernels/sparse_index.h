// The block-sparse index of one (query shard, kv shard) pair from a vertical-slash pattern
// (docs/algorithms.md, 1): CSR rows of active kv blocks and of gathered key columns per (sequence,
// head, query block), and the transposed rows the GPU backward walks. On CUDA tensors the rows
// are built by kernels/cuda/sparse_index.cu; kernels/cpu/sparse_index_cpu.h is its reference twin
// and the CPU path.
#pragma once

#include <ATen/ATen.h>

#include "kernels/sparse_attention.h"

namespace sparsering::kernels {

struct VerticalSlashPattern;

// Which parts of the transposed index (kv block -> query blocks) to build: the GPU's fast
// backward walks the transposed blocks; the deterministic backward also the transposed columns
// (a sort, so only when asked).
enum class Transpose { kNone, kBlocks, kBlocksAndColumns };

// The index of one (query shard, kv shard) pair, replicated over `batch`. Columns inside an
// active block of their row are left to the block part, and a kv block made wholly of a head's
// columns (the sink, for one) becomes an active block of every causal row: the same pairs. When
// blocks.q_key_starts is defined (document masking), each (sequence, query block) row drops the kv
// blocks and columns that lie entirely before the smallest key start of its queries: they would be
// masked anyway, so this only saves work and the rows then differ per sequence.
SparseIndex build_sparse_index(const VerticalSlashPattern& pattern, const ShardBlocks& blocks,
                               int64_t batch, int64_t kv_heads, Transpose transpose);

// int32 CSR row offsets [n + 1] from n per-row entry counts (any integer type, any shape). With
// `total`, it receives the number of entries (int64, 0-dim, on the counts' device), summed before
// any int32 rounding, for check_index_entries.
at::Tensor row_offsets_of(const at::Tensor& counts, at::Tensor* total = nullptr);

// The kernels index entries with int32 (sparse_attention_params.h): refuses `entries` of one part
// of an index ("block", "column") beyond that, naming what shrinks it, instead of letting the
// row offsets wrap.
void check_index_entries(int64_t entries, const char* part);

// Attended (query, key) pairs of an index, counting blocks as full; for density figures.
int64_t attended_pairs(const SparseIndex& index);

// A pattern resolved onto one (query shard, kv shard) pair: what both row builders read. Small
// tensors (per head and global block, per head and column), on the pattern's device.
struct SparseIndexInputs {
  int64_t batch = 0, heads = 0, kv_heads = 0, block_size = 0;
  int64_t q_blocks = 0, k_blocks = 0, global_blocks = 0;
  at::Tensor q_block_ids, k_block_ids;  // int32 [q_blocks], [k_blocks]: global block ids
  at::Tensor block_diagonals;  // bool [heads, global_blocks]: chosen block offsets (pattern's)
  // bool [heads, global_blocks]: kv blocks whose every key is one of the head's columns.
  at::Tensor column_blocks;
  at::Tensor columns;        // int32 [heads, C]: global positions, ascending, -1 padded
  at::Tensor column_slots;   // int32 [heads, C]: local kv block of the column, -1 if not here
  at::Tensor column_tokens;  // int32 [heads, C]: local key token of the column (0 if not here)
  // int32 [batch, q_blocks]: with document masks, the smallest key start over the block's
  // queries (a key before it is invisible to the whole block); undefined without.
  at::Tensor first_keys;
};

// Resolves `pattern` onto the pair (checks blocks.q_key_starts' shape).
SparseIndexInputs sparse_index_inputs(const VerticalSlashPattern& pattern,
                                      const ShardBlocks& blocks, int64_t batch, int64_t kv_heads);

}  // namespace sparsering::kernels

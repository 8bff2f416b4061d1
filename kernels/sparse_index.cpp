#include "kernels/sparse_index.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernels/cpu/sparse_index_cpu.h"
#include "kernels/sparse_attention_cuda_ops.h"
#include "kernels/sparse_attention_params.h"
#include "kernels/vertical_slash.h"

namespace sparsering::kernels {
namespace {

// Integer division of an int64 tensor (operator/ on integer tensors is true division).
at::Tensor divide(const at::Tensor& t, int64_t divisor) { return at::div(t, divisor, "floor"); }

// The keys some query attends as a column, per (sequence, kv head) row of `attended` (bool
// [rows, k_tokens]): ascending local tokens, -1 padded to a capacity that is a multiple of
// kColumnKeyChunk. A kv head's rows hold at most `bound` such keys (its heads' column budgets), so
// the capacity, and with it the deterministic column pass's grid, is known without reading the
// device.
at::Tensor column_keys(const at::Tensor& attended, int64_t bound) {
  const int64_t rows = attended.size(0), k_tokens = attended.size(1);
  const int64_t chunk = kColumnKeyChunk;
  const int64_t capacity = (std::min(k_tokens, bound) + chunk - 1) / chunk * chunk;
  const auto long_options = attended.options().dtype(at::kLong);
  // Attended key i of a row goes to slot i; the others to a spill slot past the capacity.
  const auto slot = at::where(attended, attended.to(at::kLong).cumsum(1) - 1,
                              at::full({}, capacity, long_options));
  auto keys = at::full({rows, capacity + 1}, -1, long_options);
  keys.scatter_(1, slot, at::arange(k_tokens, long_options).expand({rows, k_tokens}));
  return keys.slice(1, 0, capacity).to(at::kInt).contiguous();
}

// The deterministic backward's transposed columns, from the column rows: rows (sequence, kv
// head, key token), entries q_head * q_blocks + qb in ascending row order (a stable sort of the
// column entries by their transposed row).
void add_transposed_columns(SparseIndex& index, const SparseIndexInputs& in) {
  const int64_t rows = in.batch * in.heads * in.q_blocks;
  const int64_t k_tokens = in.k_blocks * in.block_size;
  const auto long_options = index.column_row_offsets.options().dtype(at::kLong);
  const auto offsets = index.column_row_offsets.to(at::kLong);
  const auto per_row = offsets.slice(0, 1) - offsets.slice(0, 0, rows);
  const auto entry_rows = at::repeat_interleave(at::arange(rows, long_options), per_row,
                                                /*dim=*/0, index.num_columns());
  const auto entry_heads = divide(entry_rows, in.q_blocks) % in.heads;
  const auto batch_of_entry = divide(entry_rows, in.heads * in.q_blocks);
  const auto qb_of_entry = entry_rows % in.q_blocks;
  const auto key =
      (batch_of_entry * in.kv_heads + divide(entry_heads, in.heads / in.kv_heads)) * k_tokens +
      index.column_indices.to(at::kLong);
  const auto order = std::get<1>(key.sort(/*stable=*/true, 0, false));
  index.t_column_entries =
      (entry_heads * in.q_blocks + qb_of_entry).index_select(0, order).to(at::kInt).contiguous();
  const int64_t kv_rows = in.batch * in.kv_heads;
  const auto per_key = at::bincount(key, {}, kv_rows * k_tokens);
  index.t_column_row_offsets = row_offsets_of(per_key);
  index.t_column_keys = column_keys(per_key.view({kv_rows, k_tokens}) > 0,
                                    (in.heads / in.kv_heads) * in.columns.size(1));
}

}  // namespace

SparseIndexInputs sparse_index_inputs(const VerticalSlashPattern& pattern,
                                      const ShardBlocks& blocks, int64_t batch, int64_t kv_heads) {
  SparseIndexInputs in;
  in.batch = batch;
  in.heads = pattern.block_diagonals.size(0);
  in.kv_heads = kv_heads;
  in.block_size = pattern.block_size;
  in.q_block_ids = blocks.q_block_ids.to(at::kInt).contiguous();
  in.k_block_ids = blocks.k_block_ids.to(at::kInt).contiguous();
  in.q_blocks = in.q_block_ids.numel();
  in.k_blocks = in.k_block_ids.numel();
  in.global_blocks = pattern.block_diagonals.size(1);
  in.block_diagonals = pattern.block_diagonals.contiguous();
  const int64_t bs = in.block_size, global_blocks = in.global_blocks;
  const auto& columns = pattern.columns;  // int64 [heads, C], -1 padded
  const auto long_options = columns.options();

  // A kv block whose every key is a chosen column of the head (the sink, block-aligned column
  // groups) is attended whole by every row that sees it, so it runs as an active block (same
  // pairs), whose backward keeps dK/dV in registers, instead of as gathered columns, whose
  // backward adds dK/dV with atomics.
  auto columns_per_block = at::zeros({in.heads, global_blocks + 1}, long_options);
  columns_per_block.scatter_add_(
      1, at::where(columns >= 0, divide(columns, bs), at::full({}, global_blocks, long_options)),
      at::ones_like(columns));
  in.column_blocks = (columns_per_block.slice(1, 0, global_blocks) == bs).contiguous();

  auto slot_of_block = at::full({global_blocks}, -1, long_options);
  slot_of_block.index_copy_(0, in.k_block_ids.to(at::kLong), at::arange(in.k_blocks, long_options));
  const auto column_slots =
      at::where(columns >= 0,
                slot_of_block.index_select(0, divide(columns.clamp_min(0), bs).reshape(-1))
                    .view(columns.sizes()),
                at::full({}, -1, long_options));
  in.columns = columns.to(at::kInt).contiguous();
  in.column_slots = column_slots.to(at::kInt).contiguous();
  in.column_tokens =
      (column_slots.clamp_min(0) * bs + columns.clamp_min(0) % bs).to(at::kInt).contiguous();

  if (blocks.q_key_starts.defined()) {
    TORCH_CHECK(blocks.q_key_starts.dim() == 2 && blocks.q_key_starts.size(0) == batch &&
                    blocks.q_key_starts.size(1) == in.q_blocks * bs,
                "build_sparse_index: q_key_starts must be [batch, q_tokens] = [", batch, ", ",
                in.q_blocks * bs, "], got ", blocks.q_key_starts.sizes());
    in.first_keys =
        blocks.q_key_starts.reshape({batch, in.q_blocks, bs}).amin(-1).to(at::kInt).contiguous();
  }
  return in;
}

SparseIndex build_sparse_index(const VerticalSlashPattern& pattern, const ShardBlocks& blocks,
                               int64_t batch, int64_t kv_heads, Transpose transpose) {
  const auto in = sparse_index_inputs(pattern, blocks, batch, kv_heads);
  const bool transposed_blocks = transpose != Transpose::kNone;
  SparseIndex index = in.block_diagonals.is_cuda()
                          ? cuda_ops::sparse_index_cuda(in, transposed_blocks)
                          : cpu::sparse_index_cpu(in, transposed_blocks);
  if (transpose == Transpose::kBlocksAndColumns) add_transposed_columns(index, in);
  return index;
}

at::Tensor row_offsets_of(const at::Tensor& counts, at::Tensor* total) {
  const auto sums = counts.reshape(-1).cumsum(0, at::kLong);
  auto offsets = at::zeros({counts.numel() + 1}, counts.options().dtype(at::kInt));
  offsets.slice(0, 1).copy_(sums);
  if (total) *total = counts.numel() > 0 ? sums[-1] : at::zeros({}, sums.options());
  return offsets;
}

void check_index_entries(int64_t entries, const char* part) {
  TORCH_CHECK(entries <= std::numeric_limits<int32_t>::max(), "build_sparse_index: ", entries, " ",
              part,
              " entries in one shard pair exceed the kernels' int32 index; raise "
              "parallel.context_parallel_size (shorter shards), attention.block_size, or lower "
              "the column budget (attention.vertical_fraction / vertical_budget)");
}

int64_t attended_pairs(const SparseIndex& index) {
  return index.num_blocks() * index.block_size * index.block_size +
         index.num_columns() * index.block_size;
}

}  // namespace sparsering::kernels

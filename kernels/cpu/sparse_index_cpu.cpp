#include "kernels/cpu/sparse_index_cpu.h"

namespace sparsering::kernels::cpu {
SparseIndex sparse_index_cpu(const SparseIndexInputs& in, bool transposed_blocks) {
  const int64_t batch = in.batch, heads = in.heads, kv_heads = in.kv_heads;
  const int64_t group = heads / kv_heads, bs = in.block_size;
  const int64_t q_blocks = in.q_blocks, k_blocks = in.k_blocks;
  const auto q_ids = in.q_block_ids.to(at::kLong);
  const auto k_ids = in.k_block_ids.to(at::kLong);
  const auto int_options = q_ids.options().dtype(at::kInt);

  // Blocks: causal, and a chosen diagonal crosses them or their kv block is made of columns.
  const auto offset = q_ids.unsqueeze(1) - k_ids.unsqueeze(0);  // [q_blocks, k_blocks]
  const auto block_mask = in.block_diagonals.index_select(1, offset.clamp_min(0).reshape(-1))
                              .view({heads, q_blocks, k_blocks})
                              .logical_or(in.column_blocks.index_select(1, k_ids).unsqueeze(1))
                              .logical_and((offset >= 0).unsqueeze(0));

  // Columns: in this kv shard, not after the row's last query, not inside an active block.
  const int64_t num_columns = in.columns.size(1);
  const auto column_slots = in.column_slots.to(at::kLong);
  const auto q_last = q_ids * bs + (bs - 1);  // [q_blocks]
  const auto covered = block_mask.gather(
      2, column_slots.clamp_min(0).unsqueeze(1).expand({heads, q_blocks, num_columns}));
  const auto column_mask =
      (column_slots >= 0)
          .unsqueeze(1)
          .logical_and(in.columns.unsqueeze(1) <= q_last.view({1, q_blocks, 1}))
          .logical_and(covered.logical_not());  // [heads, q_blocks, C]

  // [mask_batch, heads, q_blocks, k_blocks] and [mask_batch, heads, q_blocks, C]: one batch
  // entry serves all unless document masking makes the rows differ per sequence.
  auto batch_blocks = block_mask.unsqueeze(0);
  auto batch_columns = column_mask.unsqueeze(0);
  if (in.first_keys.defined()) {
    const auto first_key = in.first_keys.view({batch, 1, q_blocks, 1});
    const auto k_last = (k_ids * bs + (bs - 1)).view({1, 1, 1, k_blocks});
    batch_blocks = batch_blocks.logical_and(k_last >= first_key);
    batch_columns =
        batch_columns.logical_and(in.columns.view({1, heads, 1, num_columns}) >= first_key);
  }
  const int64_t mask_batch = batch_blocks.size(0);
  auto every_sequence = [&](const at::Tensor& entries) {
    return mask_batch == batch ? entries : entries.repeat({batch});
  };

  SparseIndex index;
  index.block_size = static_cast<int>(bs);
  at::Tensor block_entries, column_entries;
  index.block_row_offsets =
      row_offsets_of(batch_blocks.sum(-1).expand({batch, heads, q_blocks}), &block_entries);
  check_index_entries(block_entries.item<int64_t>(), "block");
  index.block_cols = every_sequence(at::arange(k_blocks, int_options)
                                        .view({1, 1, 1, k_blocks})
                                        .expand_as(batch_blocks)
                                        .masked_select(batch_blocks));
  index.column_row_offsets =
      row_offsets_of(batch_columns.sum(-1).expand({batch, heads, q_blocks}), &column_entries);
  check_index_entries(column_entries.item<int64_t>(), "column");
  index.column_indices = every_sequence(in.column_tokens.view({1, heads, 1, num_columns})
                                            .expand_as(batch_columns)
                                            .masked_select(batch_columns));
  if (!transposed_blocks) return index;

  // Rows (sequence, kv head, kv block), entries q_head * q_blocks + qb over the GQA group.
  const auto t_mask = batch_blocks.view({mask_batch, kv_heads, group, q_blocks, k_blocks})
                          .permute({0, 1, 4, 2, 3});  // [mask_batch, kv_heads, kb, group, qb]
  index.t_block_row_offsets =
      row_offsets_of(t_mask.sum({3, 4}).expand({batch, kv_heads, k_blocks}));
  index.t_block_entries = every_sequence(at::arange(heads * q_blocks, int_options)
                                             .view({1, kv_heads, 1, group, q_blocks})
                                             .expand_as(t_mask)
                                             .masked_select(t_mask));
  return index;
}

}  // namespace sparsering::kernels::cpu

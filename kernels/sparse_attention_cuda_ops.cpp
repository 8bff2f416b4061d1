// Tensors -> kernel parameters -> kernels/cuda launchers, on the current stream.
#include "kernels/sparse_attention_cuda_ops.h"

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <vector>

#include "kernels/cuda/attention_mass_cuda.h"
#include "kernels/cuda/pattern_select_cuda.h"
#include "kernels/cuda/sampled_attention_mass_cuda.h"
#include "kernels/cuda/sparse_attention_cuda.h"
#include "kernels/cuda/sparse_index_cuda.h"

namespace sparsering::kernels::cuda_ops {
namespace {

ElementType element_type(const at::Tensor& t) {
  if (t.scalar_type() == at::kBFloat16) return ElementType::kBFloat16;
  if (t.scalar_type() == at::kHalf) return ElementType::kFloat16;
  TORCH_CHECK(false, "CUDA sparse attention takes bf16 or fp16 tensors, got ", t.scalar_type(),
              "; set train.dtype = BFLOAT16");
}

const int32_t* int32_data(const at::Tensor& t, const char* name) {
  TORCH_CHECK(!t.defined() || (t.is_cuda() && t.scalar_type() == at::kInt && t.is_contiguous()),
              "CUDA sparse attention: ", name, " must be a contiguous int32 CUDA tensor");
  return t.defined() && t.numel() > 0 ? t.data_ptr<int32_t>() : nullptr;
}

void check_launch(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

SparseAttentionParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const ShardBlocks& blocks, const SparseIndex& index,
                                  double softmax_scale) {
  TORCH_CHECK(q.is_contiguous() && k.is_contiguous() && v.is_contiguous(),
              "CUDA sparse attention: q, k, v must be contiguous");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "CUDA sparse attention: q, k, v must share one dtype");
  SparseAttentionParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.element_type = element_type(q);
  p.batch = static_cast<int>(q.size(0));
  p.q_tokens = static_cast<int>(q.size(1));
  p.k_tokens = static_cast<int>(k.size(1));
  p.num_heads = static_cast<int>(q.size(2));
  p.num_kv_heads = static_cast<int>(k.size(2));
  p.head_dim = static_cast<int>(q.size(3));
  p.block_size = index.block_size;
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.q_block_ids = int32_data(blocks.q_block_ids, "q_block_ids");
  p.k_block_ids = int32_data(blocks.k_block_ids, "k_block_ids");
  p.block_row_offsets = int32_data(index.block_row_offsets, "block_row_offsets");
  p.block_cols = int32_data(index.block_cols, "block_cols");
  p.column_row_offsets = int32_data(index.column_row_offsets, "column_row_offsets");
  p.column_indices = int32_data(index.column_indices, "column_indices");
  p.q_key_start = int32_data(blocks.q_key_starts, "q_key_starts");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(p.q_key_start) % 16 == 0,
              "CUDA sparse attention: q_key_starts must be 16-byte aligned (the backward copies "
              "it in 16-byte chunks); pass a tensor of its own, e.g. .clone()");
  return p;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace

AttentionPartial sparse_attention_forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const ShardBlocks& blocks,
                                               const SparseIndex& index, double softmax_scale) {
  const c10::cuda::CUDAGuard guard(q.device());
  auto p = make_params(q, k, v, blocks, index, softmax_scale);
  AttentionPartial result{at::empty_like(q), at::empty({q.size(0), q.size(2), q.size(1)},
                                                       q.options().dtype(at::kFloat))};
  p.out = result.out.data_ptr();
  p.lse = result.lse.data_ptr<float>();
  check_launch(kernels::launch_sparse_attention_forward(p, current_stream()),
               "launch_sparse_attention_forward");
  return result;
}

void sparse_attention_backward_cuda(const at::Tensor& dout, const at::Tensor& q,
                                    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                    const at::Tensor& lse, const at::Tensor& delta,
                                    const ShardBlocks& blocks, const SparseIndex& index,
                                    double softmax_scale, bool deterministic, at::Tensor& dq,
                                    at::Tensor& dk, at::Tensor& dv) {
  const c10::cuda::CUDAGuard guard(q.device());
  TORCH_CHECK(dout.is_contiguous() && out.is_contiguous() && lse.is_contiguous() &&
                  delta.is_contiguous() && dq.is_contiguous() && dk.is_contiguous() &&
                  dv.is_contiguous(),
              "CUDA sparse attention backward: tensors must be contiguous");
  SparseAttentionBackwardParams p;
  p.forward = make_params(q, k, v, blocks, index, softmax_scale);
  p.forward.out = const_cast<void*>(out.data_ptr());
  p.forward.lse = const_cast<float*>(lse.data_ptr<float>());
  p.dout = dout.data_ptr();
  p.delta = delta.data_ptr<float>();
  p.dq = dq.data_ptr<float>();
  p.dk = dk.data_ptr<float>();
  p.dv = dv.data_ptr<float>();
  p.deterministic = deterministic;
  // The transposed index selects the fast kv-block-outer schedule (dK/dV in registers); without
  // it the kernels fall back to the query-block-outer schedule with dK/dV atomics.
  TORCH_CHECK(!deterministic ||
                  (index.t_block_row_offsets.defined() && index.t_column_row_offsets.defined()),
              "deterministic backward needs the transposed blocks and columns "
              "(build_sparse_index with Transpose::kBlocksAndColumns)");
  if (index.t_block_row_offsets.defined()) {
    p.t_block_row_offsets = int32_data(index.t_block_row_offsets, "t_block_row_offsets");
    p.t_block_entries = int32_data(index.t_block_entries, "t_block_entries");
  }
  if (index.t_column_row_offsets.defined()) {
    p.t_column_row_offsets = int32_data(index.t_column_row_offsets, "t_column_row_offsets");
    p.t_column_entries = int32_data(index.t_column_entries, "t_column_entries");
    TORCH_CHECK(index.t_column_keys.defined() && index.t_column_keys.dim() == 2,
                "sparse attention backward: the transposed columns come without t_column_keys "
                "(build_sparse_index with Transpose::kBlocksAndColumns makes both)");
    // The column pass sizes its grid from this tensor's shape: a row per (sequence, kv head).
    TORCH_CHECK(index.t_column_keys.size(0) ==
                    static_cast<int64_t>(p.forward.batch) * p.forward.num_kv_heads,
                "sparse attention backward: t_column_keys has ", index.t_column_keys.size(0),
                " rows, expected batch * kv heads = ",
                static_cast<int64_t>(p.forward.batch) * p.forward.num_kv_heads);
    p.t_column_keys = int32_data(index.t_column_keys, "t_column_keys");
    p.t_column_key_capacity = static_cast<int>(index.t_column_keys.size(1));
  }
  check_launch(kernels::launch_sparse_attention_backward(p, current_stream()),
               "launch_sparse_attention_backward");
}

at::Tensor attention_delta_cuda(const at::Tensor& dout, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(dout.device());
  TORCH_CHECK(dout.is_contiguous() && out.is_contiguous() && dout.sizes() == out.sizes(),
              "attention_delta: dout and out must be contiguous and of one shape");
  auto delta =
      at::empty({dout.size(0), dout.size(2), dout.size(1)}, dout.options().dtype(at::kFloat));
  check_launch(
      kernels::launch_attention_backward_delta(
          delta.data_ptr<float>(), dout.data_ptr(), out.data_ptr(), element_type(dout),
          static_cast<int>(dout.size(0)), static_cast<int>(dout.size(1)),
          static_cast<int>(dout.size(2)), static_cast<int>(dout.size(3)), current_stream()),
      "launch_attention_backward_delta");
  return delta;
}

void lse_merge_cuda(at::Tensor& out_acc, at::Tensor& lse_acc, const at::Tensor& out_part,
                    const at::Tensor& lse_part) {
  const c10::cuda::CUDAGuard guard(out_acc.device());
  TORCH_CHECK(out_acc.scalar_type() == at::kFloat && lse_acc.scalar_type() == at::kFloat &&
                  lse_part.scalar_type() == at::kFloat,
              "lse_merge: the accumulator and both lse tensors must be fp32");
  TORCH_CHECK(out_acc.is_contiguous() && lse_acc.is_contiguous() && out_part.is_contiguous() &&
                  lse_part.is_contiguous(),
              "lse_merge: tensors must be contiguous");
  check_launch(kernels::launch_lse_merge(out_acc.data_ptr<float>(), lse_acc.data_ptr<float>(),
                                         out_part.data_ptr(), lse_part.data_ptr<float>(),
                                         element_type(out_part), static_cast<int>(out_acc.size(0)),
                                         static_cast<int>(out_acc.size(1)),
                                         static_cast<int>(out_acc.size(2)),
                                         static_cast<int>(out_acc.size(3)), current_stream()),
               "launch_lse_merge");
}

SoftmaxRowStats softmax_row_stats_cuda(const at::Tensor& logits) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto rows = logits.sizes().slice(0, 3);
  SoftmaxRowStats stats{at::empty(rows, logits.options()), at::empty(rows, logits.options())};
  check_launch(kernels::launch_softmax_row_stats(
                   stats.max.data_ptr<float>(), stats.sum.data_ptr<float>(),
                   logits.data_ptr<float>(), stats.max.numel(), logits.size(3), current_stream()),
               "launch_softmax_row_stats");
  return stats;
}

AttentionMass attention_mass_from_logits_cuda(const at::Tensor& logits, const at::Tensor& row_max,
                                              const at::Tensor& row_sum,
                                              const at::Tensor& q_positions,
                                              const at::Tensor& k_positions,
                                              int64_t sequence_length) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t heads = logits.size(1);
  // The kernels write every element of both outputs.
  AttentionMass mass{at::empty({heads, sequence_length}, logits.options()),
                     at::empty({heads, sequence_length}, logits.options())};
  auto key_slot_of_position = at::empty({sequence_length}, logits.options().dtype(at::kInt));
  AttentionMassParams p;
  p.logits = logits.data_ptr<float>();
  p.row_max = row_max.data_ptr<float>();
  p.row_sum = row_sum.data_ptr<float>();
  p.q_positions = q_positions.data_ptr<int64_t>();
  p.k_positions = k_positions.data_ptr<int64_t>();
  p.batch = static_cast<int>(logits.size(0));
  p.heads = static_cast<int>(heads);
  p.queries = static_cast<int>(logits.size(2));
  p.k_tokens = logits.size(3);
  p.sequence_length = sequence_length;
  p.vertical = mass.vertical.data_ptr<float>();
  p.slash = mass.slash.data_ptr<float>();
  p.key_slot_of_position = key_slot_of_position.data_ptr<int32_t>();
  check_launch(kernels::launch_attention_mass_from_logits(p, current_stream()),
               "launch_attention_mass_from_logits");
  return mass;
}

namespace {

SampledEstimationParams sampled_params(const SampledQueries& sampled) {
  SampledEstimationParams p;
  p.q_sample = sampled.q_sample.data_ptr();
  p.k = sampled.k.data_ptr();
  p.element_type = element_type(sampled.k);
  p.batch = static_cast<int>(sampled.q_sample.size(0));
  p.heads = static_cast<int>(sampled.q_sample.size(2));
  p.kv_heads = static_cast<int>(sampled.k.size(2));
  p.head_dim = static_cast<int>(sampled.k.size(3));
  p.queries = static_cast<int>(sampled.q_sample.size(1));
  p.k_tokens = sampled.k.size(1);
  p.first_query_position = sampled.first_position;
  p.k_positions = sampled.k_positions.data_ptr<int64_t>();
  p.softmax_scale = static_cast<float>(sampled.softmax_scale);
  return p;
}

}  // namespace

SoftmaxRowStats sampled_row_stats_cuda(const SampledQueries& sampled) {
  const c10::cuda::CUDAGuard guard(sampled.k.device());
  const auto options = sampled.k.options().dtype(at::kFloat);
  const std::vector<int64_t> rows{sampled.q_sample.size(0), sampled.q_sample.size(2),
                                  sampled.q_sample.size(1)};
  SoftmaxRowStats stats{at::empty(rows, options), at::empty(rows, options)};
  SampledEstimationParams p = sampled_params(sampled);
  // Only the row statistics: any length that holds the keys and the queries passes the checks.
  p.sequence_length = std::max(p.k_tokens, (p.first_query_position + p.queries + 63) / 64 * 64);
  auto partials = at::empty({2 * sampled_row_stats_workspace_floats(p)}, options);
  p.row_max = stats.max.data_ptr<float>();
  p.row_sum = stats.sum.data_ptr<float>();
  p.row_partials = partials.data_ptr<float>();
  check_launch(kernels::launch_sampled_row_stats(p, current_stream()), "launch_sampled_row_stats");
  return stats;
}

AttentionMass sampled_attention_mass_cuda(const SampledQueries& sampled, const at::Tensor& row_max,
                                          const at::Tensor& row_sum, int64_t sequence_length) {
  const c10::cuda::CUDAGuard guard(sampled.k.device());
  const auto options = sampled.k.options().dtype(at::kFloat);
  TORCH_CHECK(sequence_length % 64 == 0,
              "sampled_attention_mass on a GPU needs a sequence "
              "length that is a multiple of 64, got ",
              sequence_length);
  const int64_t heads = sampled.q_sample.size(2);
  // The kernels write every element of both outputs.
  AttentionMass mass{at::empty({heads, sequence_length}, options),
                     at::empty({heads, sequence_length}, options)};
  SampledEstimationParams p = sampled_params(sampled);
  p.sequence_length = sequence_length;
  auto slash_partials = at::empty({sampled_slash_workspace_floats(p)}, options);
  auto tile_map = at::empty({sequence_length / 64}, options.dtype(at::kInt));
  p.sequence_row_max = row_max.data_ptr<float>();
  p.sequence_row_sum = row_sum.data_ptr<float>();
  p.vertical = mass.vertical.data_ptr<float>();
  p.slash = mass.slash.data_ptr<float>();
  p.slash_partials = slash_partials.data_ptr<float>();
  p.tile_of_position_tile = tile_map.data_ptr<int32_t>();
  check_launch(kernels::launch_sampled_attention_mass(p, current_stream()),
               "launch_sampled_attention_mass");
  return mass;
}

VerticalSlashPattern select_pattern_cuda(const AttentionMass& mass, int64_t num_columns,
                                         int64_t num_diagonals, int64_t sink_tokens,
                                         int64_t local_tokens, int block_size, int64_t width) {
  const c10::cuda::CUDAGuard guard(mass.vertical.device());
  const auto vertical = mass.vertical.to(at::kFloat).contiguous();
  const auto slash = mass.slash.to(at::kFloat).contiguous();
  const int64_t heads = vertical.size(0), length = vertical.size(1);
  VerticalSlashPattern pattern;
  pattern.block_size = block_size;
  pattern.sequence_length = length;
  // The kernel writes every slot of the columns and only sets block offsets.
  pattern.columns = at::empty({heads, width}, vertical.options().dtype(at::kLong));
  pattern.block_diagonals =
      at::zeros({heads, length / block_size}, vertical.options().dtype(at::kBool));
  PatternSelectParams p;
  p.vertical = vertical.data_ptr<float>();
  p.slash = slash.data_ptr<float>();
  p.heads = static_cast<int>(heads);
  p.length = length;
  p.block_size = block_size;
  p.num_columns = num_columns;
  p.num_diagonals = num_diagonals;
  p.sink_tokens = sink_tokens;
  p.local_tokens = local_tokens;
  p.width = width;
  p.columns = pattern.columns.data_ptr<int64_t>();
  p.block_diagonals = pattern.block_diagonals.data_ptr<bool>();
  check_launch(kernels::launch_select_pattern(p, current_stream()), "launch_select_pattern");
  return pattern;
}

SparseIndex sparse_index_cuda(const SparseIndexInputs& in, bool transposed_blocks) {
  const c10::cuda::CUDAGuard guard(in.block_diagonals.device());
  TORCH_CHECK(
      in.block_diagonals.scalar_type() == at::kBool && in.column_blocks.scalar_type() == at::kBool,
      "CUDA sparse index: block_diagonals and column_blocks must be bool");
  SparseIndexParams p;
  p.q_block_ids = int32_data(in.q_block_ids, "q_block_ids");
  p.k_block_ids = int32_data(in.k_block_ids, "k_block_ids");
  p.block_diagonals = in.block_diagonals.data_ptr<bool>();
  p.column_blocks = in.column_blocks.data_ptr<bool>();
  p.columns = int32_data(in.columns, "columns");
  p.column_slots = int32_data(in.column_slots, "column_slots");
  p.column_tokens = int32_data(in.column_tokens, "column_tokens");
  p.first_keys = int32_data(in.first_keys, "first_keys");
  p.batch = static_cast<int>(in.batch);
  p.heads = static_cast<int>(in.heads);
  p.kv_heads = static_cast<int>(in.kv_heads);
  p.block_size = static_cast<int>(in.block_size);
  p.q_blocks = static_cast<int>(in.q_blocks);
  p.k_blocks = static_cast<int>(in.k_blocks);
  p.global_blocks = static_cast<int>(in.global_blocks);
  p.num_columns = static_cast<int>(in.columns.size(1));
  p.transposed_blocks = transposed_blocks;

  // Count pass, row offsets, one host read of the three totals, fill pass.
  const int64_t query_rows = in.batch * in.heads * in.q_blocks;
  const int64_t t_rows = transposed_blocks ? in.batch * in.kv_heads * in.k_blocks : 0;
  const auto int_options = in.q_block_ids.options();
  const auto counts = at::empty({2 * query_rows + t_rows}, int_options);
  p.block_counts = counts.data_ptr<int32_t>();
  p.column_counts = p.block_counts + query_rows;
  p.t_block_counts = transposed_blocks ? p.column_counts + query_rows : nullptr;
  check_launch(launch_sparse_index_counts(p, current_stream()), "launch_sparse_index_counts");

  SparseIndex index;
  index.block_size = static_cast<int>(in.block_size);
  std::vector<at::Tensor> totals(transposed_blocks ? 3 : 2);
  index.block_row_offsets = row_offsets_of(counts.slice(0, 0, query_rows), &totals[0]);
  index.column_row_offsets =
      row_offsets_of(counts.slice(0, query_rows, 2 * query_rows), &totals[1]);
  if (transposed_blocks) {
    index.t_block_row_offsets = row_offsets_of(counts.slice(0, 2 * query_rows), &totals[2]);
  }
  const auto sizes = at::stack(totals).cpu();
  const auto* size = sizes.data_ptr<int64_t>();
  check_index_entries(size[0], "block");  // the transposed blocks are the same entries
  check_index_entries(size[1], "column");
  index.block_cols = at::empty({size[0]}, int_options);
  index.column_indices = at::empty({size[1]}, int_options);
  p.block_row_offsets = index.block_row_offsets.data_ptr<int32_t>();
  p.column_row_offsets = index.column_row_offsets.data_ptr<int32_t>();
  p.block_cols = index.block_cols.data_ptr<int32_t>();
  p.column_indices = index.column_indices.data_ptr<int32_t>();
  if (transposed_blocks) {
    index.t_block_entries = at::empty({size[2]}, int_options);
    p.t_block_row_offsets = index.t_block_row_offsets.data_ptr<int32_t>();
    p.t_block_entries = index.t_block_entries.data_ptr<int32_t>();
  }
  check_launch(launch_sparse_index_fill(p, current_stream()), "launch_sparse_index_fill");
  return index;
}

}  // namespace sparsering::kernels::cuda_ops

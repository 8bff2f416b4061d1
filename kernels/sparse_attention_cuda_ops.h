// CUDA side of the sparse attention, pattern estimation and cross-entropy ops: fills the kernels'
// parameters from tensors and launches kernels/cuda/ on the current stream. In a build without nvcc
// these throw. Callers (kernels/sparse_attention.cpp, kernels/vertical_slash.cpp) have checked
// shapes.
#pragma once

#include <optional>

#include "kernels/cross_entropy.h"
#include "kernels/sparse_attention.h"
#include "kernels/vertical_slash.h"

namespace sparsering::kernels::cuda_ops {

AttentionPartial sparse_attention_forward_cuda(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const ShardBlocks& blocks,
                                               const SparseIndex& index, double softmax_scale);

void sparse_attention_backward_cuda(const at::Tensor& dout, const at::Tensor& q,
                                    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                    const at::Tensor& lse, const at::Tensor& delta,
                                    const ShardBlocks& blocks, const SparseIndex& index,
                                    double softmax_scale, bool deterministic, at::Tensor& dq,
                                    at::Tensor& dk, at::Tensor& dv);

at::Tensor attention_delta_cuda(const at::Tensor& dout, const at::Tensor& out);

void lse_merge_cuda(at::Tensor& out_acc, at::Tensor& lse_acc, const at::Tensor& out_part,
                    const at::Tensor& lse_part);

SoftmaxRowStats softmax_row_stats_cuda(const at::Tensor& logits);

AttentionMass attention_mass_from_logits_cuda(const at::Tensor& logits, const at::Tensor& row_max,
                                              const at::Tensor& row_sum,
                                              const at::Tensor& q_positions,
                                              const at::Tensor& k_positions,
                                              int64_t sequence_length);

// sampled_row_stats / sampled_attention_mass (kernels/vertical_slash.h) on
// kernels/cuda/sampled_attention_mass.cu; make_sampled_queries has checked the inputs.
SoftmaxRowStats sampled_row_stats_cuda(const SampledQueries& sampled);
AttentionMass sampled_attention_mass_cuda(const SampledQueries& sampled, const at::Tensor& row_max,
                                          const at::Tensor& row_sum, int64_t sequence_length);

// select_pattern (kernels/vertical_slash.h) in one launch (kernels/cuda/pattern_select.cu);
// num_columns, num_diagonals, sink_tokens and local_tokens already clamped to [0, length], and
// `width` the columns' row width.
VerticalSlashPattern select_pattern_cuda(const AttentionMass& mass, int64_t num_columns,
                                         int64_t num_diagonals, int64_t sink_tokens,
                                         int64_t local_tokens, int block_size, int64_t width);

// The rows of kernels/sparse_index.h on the GPU (kernels/cuda/sparse_index.cu); the transposed
// columns are left to build_sparse_index.
SparseIndex sparse_index_cuda(const SparseIndexInputs& in, bool transposed_blocks);

// cross_entropy_rows (kernels/cross_entropy.h) in one launch (kernels/cuda/cross_entropy.cu;
// this op is kernels/cross_entropy_cuda_op.cpp).
CrossEntropyRows cross_entropy_rows_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                         int64_t ignore_label, double grad_scale,
                                         std::optional<at::ScalarType> grad_type);

}  // namespace sparsering::kernels::cuda_ops

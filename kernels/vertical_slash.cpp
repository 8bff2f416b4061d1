#include "kernels/vertical_slash.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/sparse_attention_cuda_ops.h"

namespace sparsering::kernels {
namespace {

constexpr float kNegativeInfinity = -std::numeric_limits<float>::infinity();

void check_logits(const at::Tensor& logits, const char* op) {
  TORCH_CHECK(logits.dim() == 4 && logits.scalar_type() == at::kFloat && logits.is_contiguous(), op,
              ": logits must be contiguous fp32 [batch, heads, n, k_tokens] (sample_logits), got ",
              logits.scalar_type(), " ", logits.sizes());
  TORCH_CHECK(logits.size(3) > 0, op, ": logits have no keys (k_tokens = 0)");
}

void check_row_stats(const at::Tensor& logits, const at::Tensor& row_max,
                     const at::Tensor& row_sum) {
  const auto rows = logits.sizes().slice(0, 3);
  for (const at::Tensor* stat : {&row_max, &row_sum}) {
    TORCH_CHECK(stat->sizes() == rows && stat->scalar_type() == at::kFloat &&
                    stat->is_contiguous() && stat->device() == logits.device(),
                "attention_mass_from_logits: row_max and row_sum must be contiguous fp32 ", rows,
                " on ", logits.device(), " (softmax_row_stats), got ", stat->scalar_type(), " ",
                stat->sizes(), " on ", stat->device());
  }
}

void check_positions(const at::Tensor& positions, int64_t count, const at::Tensor& logits,
                     const char* name) {
  TORCH_CHECK(positions.dim() == 1 && positions.size(0) == count &&
                  positions.scalar_type() == at::kLong && positions.is_contiguous() &&
                  positions.device() == logits.device(),
              "attention_mass_from_logits: ", name, " must be contiguous int64 [", count, "] on ",
              logits.device(), ", got ", positions.scalar_type(), " ", positions.sizes(), " on ",
              positions.device());
}

// A row's softmax shift: its max, or 0 for a row without a finite logit, where subtracting the
// max would give -inf - (-inf) = NaN.
at::Tensor finite_shift(const at::Tensor& row_max) {
  return row_max.masked_fill(row_max == kNegativeInfinity, 0);
}

// CPU twins of the CUDA kernels, on plain ATen ops.
SoftmaxRowStats softmax_row_stats_cpu(const at::Tensor& logits) {
  auto max = logits.amax(-1);
  auto sum = at::exp(logits - finite_shift(max).unsqueeze(-1)).sum(-1);
  return {max, sum};
}

AttentionMass attention_mass_from_logits_cpu(const at::Tensor& logits, const at::Tensor& row_max,
                                             const at::Tensor& row_sum,
                                             const at::Tensor& q_positions,
                                             const at::Tensor& k_positions,
                                             int64_t sequence_length) {
  const auto probabilities = at::exp(logits - finite_shift(row_max).unsqueeze(-1))
                                 .div_(row_sum.unsqueeze(-1))
                                 .masked_fill_((row_sum == 0).unsqueeze(-1), 0);
  return attention_mass(probabilities, q_positions, k_positions, sequence_length);
}

}  // namespace

VerticalSlashPattern dense_pattern(int64_t heads, int64_t sequence_length, int block_size,
                                   const at::Device& device) {
  VerticalSlashPattern pattern;
  pattern.block_size = block_size;
  pattern.sequence_length = sequence_length;
  pattern.columns = at::empty({heads, 0}, at::TensorOptions().dtype(at::kLong).device(device));
  pattern.block_diagonals = at::ones({heads, sequence_length / block_size},
                                     at::TensorOptions().dtype(at::kBool).device(device));
  return pattern;
}

at::Tensor sample_logits(const at::Tensor& q_sample, const at::Tensor& q_positions,
                         const at::Tensor& k, const at::Tensor& k_positions, double softmax_scale) {
  const int64_t batch = q_sample.size(0), n = q_sample.size(1), heads = q_sample.size(2);
  const int64_t dim = q_sample.size(3), kv_heads = k.size(2), k_tokens = k.size(1);
  const int64_t group = heads / kv_heads;
  // The queries of a kv head's group side by side, against that head's keys read in place:
  // [batch x kv_heads, group x n, dim] x [batch x kv_heads, dim, k_tokens] (no repeated keys).
  const auto q_grouped = q_sample.reshape({batch, n, kv_heads, group, dim})
                             .permute({0, 2, 3, 1, 4})
                             .reshape({batch * kv_heads, group * n, dim});
  const auto k_columns = k.permute({0, 2, 3, 1}).reshape({batch * kv_heads, dim, k_tokens});
  // bf16/fp16 inputs multiply on tensor cores into fp32 on GPUs, the scale applied in the same
  // GEMM (beta = 0: the output is only written); CPUs compute in fp32.
  const bool reduced = k.scalar_type() == at::kBFloat16 || k.scalar_type() == at::kHalf;
  at::Tensor logits;
  if (reduced && k.is_cuda()) {
    const auto output =
        at::empty({batch * kv_heads, group * n, k_tokens}, q_sample.options().dtype(at::kFloat));
    logits = at::baddbmm(output, q_grouped, k_columns, at::kFloat, /*beta=*/0,
                         /*alpha=*/softmax_scale);
  } else {
    logits = at::bmm(q_grouped.to(at::kFloat), k_columns.to(at::kFloat)).mul_(softmax_scale);
  }
  logits = logits.view({batch, heads, n, k_tokens});
  // Only keys after the earliest sampled query can follow a query: mask just those columns.
  const auto late = at::nonzero(k_positions > q_positions.min()).squeeze(1);
  if (late.numel() > 0) {
    auto late_logits = logits.index_select(3, late);
    const auto after = k_positions.index_select(0, late).unsqueeze(0) > q_positions.unsqueeze(1);
    late_logits.masked_fill_(after, -std::numeric_limits<float>::infinity());
    logits.index_copy_(3, late, late_logits);
  }
  return logits;
}

AttentionMass attention_mass(const at::Tensor& probabilities, const at::Tensor& q_positions,
                             const at::Tensor& k_positions, int64_t sequence_length) {
  const int64_t heads = probabilities.size(1);
  // [heads, n, k_tokens]; a single sequence needs no copy.
  const auto per_head = probabilities.size(0) == 1 ? probabilities[0] : probabilities.sum(0);
  AttentionMass mass;
  mass.vertical = at::zeros({heads, sequence_length}, probabilities.options());
  mass.vertical.index_add_(1, k_positions, per_head.sum(1));
  // Diagonal d = query position - key position; keys after the query carry zero probability.
  const auto diagonal = (q_positions.unsqueeze(1) - k_positions.unsqueeze(0)).clamp_min(0);
  mass.slash = at::zeros({heads, sequence_length}, probabilities.options());
  mass.slash.index_add_(1, diagonal.reshape(-1), per_head.reshape({heads, -1}));
  return mass;
}

SoftmaxRowStats softmax_row_stats(const at::Tensor& logits) {
  check_logits(logits, "softmax_row_stats");
  if (logits.is_cuda()) return cuda_ops::softmax_row_stats_cuda(logits);
  return softmax_row_stats_cpu(logits);
}

at::Tensor rescale_row_sum(const SoftmaxRowStats& stats, const at::Tensor& max) {
  return (stats.sum * at::exp(stats.max - max)).masked_fill_(stats.max == kNegativeInfinity, 0);
}

AttentionMass attention_mass_from_logits(const at::Tensor& logits, const at::Tensor& row_max,
                                         const at::Tensor& row_sum, const at::Tensor& q_positions,
                                         const at::Tensor& k_positions, int64_t sequence_length) {
  check_logits(logits, "attention_mass_from_logits");
  check_row_stats(logits, row_max, row_sum);
  check_positions(q_positions, logits.size(2), logits, "q_positions");
  check_positions(k_positions, logits.size(3), logits, "k_positions");
  TORCH_CHECK(sequence_length >= logits.size(3), "attention_mass_from_logits: sequence_length (",
              sequence_length, ") is shorter than the shard's ", logits.size(3), " keys");
  if (logits.is_cuda()) {
    return cuda_ops::attention_mass_from_logits_cuda(logits, row_max, row_sum, q_positions,
                                                     k_positions, sequence_length);
  }
  return attention_mass_from_logits_cpu(logits, row_max, row_sum, q_positions, k_positions,
                                        sequence_length);
}

VerticalSlashPattern select_pattern(const AttentionMass& mass, int64_t num_columns,
                                    int64_t num_diagonals, int64_t sink_tokens,
                                    int64_t local_tokens, int block_size) {
  const int64_t heads = mass.vertical.size(0), length = mass.vertical.size(1);
  const auto device = mass.vertical.device();
  const auto bool_options = at::TensorOptions().dtype(at::kBool).device(device);

  auto chosen_columns = at::zeros({heads, length}, bool_options);
  if (num_columns > 0) {
    const auto top = std::get<1>(
        mass.vertical.topk(std::min(num_columns, length), 1, /*largest=*/true, /*sorted=*/false));
    chosen_columns.scatter_(1, top, true);
  }
  chosen_columns.slice(1, 0, std::min(sink_tokens, length)).fill_(true);
  // Ascending positions of the chosen columns, padded with -1: a chosen column's slot is the
  // count of chosen columns before it (a prefix sum, far cheaper than sorting every position);
  // the others go to a spare last slot that is cut off.
  const auto positions = at::arange(length, mass.vertical.options().dtype(at::kLong));
  const auto slot = chosen_columns.cumsum(1, at::kLong) - 1;
  const int64_t max_columns = slot.select(1, length - 1).max().item<int64_t>() + 1;
  auto columns = at::full({heads, max_columns + 1}, -1, positions.options());
  columns.scatter_(1, at::where(chosen_columns, slot, at::full({}, max_columns, slot.options())),
                   positions.unsqueeze(0).expand({heads, length}));
  columns = columns.slice(1, 0, max_columns);

  auto chosen_diagonals = at::zeros({heads, length}, bool_options);
  if (num_diagonals > 0) {
    const auto top = std::get<1>(
        mass.slash.topk(std::min(num_diagonals, length), 1, /*largest=*/true, /*sorted=*/false));
    chosen_diagonals.scatter_(1, top, true);
  }
  chosen_diagonals.slice(1, 0, std::min(local_tokens, length)).fill_(true);
  // Block offset d covers token diagonals (d-1)*bs+1 .. (d+1)*bs-1: count chosen ones there
  // with a prefix sum.
  const int64_t num_blocks = length / block_size;
  auto prefix = at::zeros({heads, length + 1}, mass.vertical.options().dtype(at::kLong));
  prefix.slice(1, 1).copy_(chosen_diagonals.to(at::kLong).cumsum(1));
  const auto d = at::arange(num_blocks, positions.options());
  const auto lo = (d * block_size - block_size + 1).clamp_min(0);
  const auto hi = (d * block_size + block_size - 1).clamp_max(length - 1) + 1;
  VerticalSlashPattern pattern;
  pattern.block_size = block_size;
  pattern.sequence_length = length;
  pattern.columns = columns.contiguous();
  pattern.block_diagonals = (prefix.index_select(1, hi) - prefix.index_select(1, lo)) > 0;
  return pattern;
}

}  // namespace sparsering::kernels

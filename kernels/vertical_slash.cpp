#include "kernels/vertical_slash.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
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

SampledQueries make_sampled_queries(const at::Tensor& q_sample, int64_t first_position,
                                    const at::Tensor& k, const at::Tensor& k_positions,
                                    double softmax_scale) {
  TORCH_CHECK(q_sample.dim() == 4 && k.dim() == 4 && q_sample.size(0) == k.size(0) &&
                  q_sample.size(3) == k.size(3) && k.size(2) > 0 &&
                  q_sample.size(2) % k.size(2) == 0 && q_sample.size(1) > 0,
              "sampled estimation: q_sample must be [batch, n > 0, heads, dim] and k [batch, "
              "k_tokens, kv_heads, dim] with kv_heads dividing heads, got ",
              q_sample.sizes(), " and ", k.sizes());
  TORCH_CHECK(q_sample.device() == k.device() && q_sample.scalar_type() == k.scalar_type(),
              "sampled estimation: q_sample and k must share one device and dtype");
  TORCH_CHECK(k_positions.dim() == 1 && k_positions.size(0) == k.size(1) &&
                  k_positions.scalar_type() == at::kLong && k_positions.device().is_cpu(),
              "sampled estimation: k_positions must be int64 [", k.size(1), "] on the CPU, got ",
              k_positions.scalar_type(), " ", k_positions.sizes(), " on ", k_positions.device());
  TORCH_CHECK(first_position >= 0, "sampled estimation: first_position is ", first_position);
  TORCH_CHECK(k.size(1) > 0, "sampled estimation: the shard has no keys (k_tokens = 0)");
  // Unique positions >= 0 (the GPU kernels write at them); their end is checked against the
  // sequence length by sampled_attention_mass.
  const auto sorted = std::get<0>(k_positions.sort());
  TORCH_CHECK(
      sorted[0].item<int64_t>() >= 0 &&
          (sorted.size(0) < 2 || sorted.slice(0, 1).gt(sorted.slice(0, 0, -1)).all().item<bool>()),
      "sampled estimation: k_positions must be unique positions >= 0");
  if (k.is_cuda()) {
    const int64_t n = q_sample.size(1), dim = k.size(3), k_tokens = k.size(1);
    TORCH_CHECK(k.scalar_type() == at::kBFloat16 || k.scalar_type() == at::kHalf,
                "sampled estimation on a GPU takes bf16 or fp16, got ", k.scalar_type(),
                "; set train.dtype = BFLOAT16");
    TORCH_CHECK(dim == 64 || dim == 128, "sampled estimation on a GPU takes head dim 64 or 128, ",
                "got ", dim);
    TORCH_CHECK(n <= 128, "sampled estimation on a GPU takes at most 128 sampled queries, got ", n,
                "; lower attention.estimation_queries");
    const char* runs_message =
        "sampled estimation on a GPU needs the keys in runs of 64 consecutive positions starting "
        "at multiples of 64 (a token layout with 64- or 128-token blocks)";
    TORCH_CHECK(k_tokens % 64 == 0, runs_message);
    const auto runs = k_positions.contiguous().view({-1, 64});
    TORCH_CHECK(runs.remainder(64).select(1, 0).eq(0).all().item<bool>() &&
                    runs.sub(runs.select(1, 0).unsqueeze(1))
                        .eq(at::arange(64, k_positions.options()))
                        .all()
                        .item<bool>(),
                runs_message);
  }
  return {q_sample.contiguous(),
          first_position,
          k.contiguous(),
          k_positions.to(k.device()).contiguous(),
          sorted[-1].item<int64_t>() + 1,
          softmax_scale};
}

namespace {

at::Tensor sampled_positions(const SampledQueries& sampled) {
  return at::arange(sampled.first_position, sampled.first_position + sampled.q_sample.size(1),
                    sampled.k_positions.options());
}

at::Tensor sampled_logits(const SampledQueries& sampled) {
  return sample_logits(sampled.q_sample, sampled_positions(sampled), sampled.k, sampled.k_positions,
                       sampled.softmax_scale);
}

}  // namespace

SoftmaxRowStats sampled_row_stats(const SampledQueries& sampled) {
  if (sampled.k.is_cuda()) return cuda_ops::sampled_row_stats_cuda(sampled);
  return softmax_row_stats(sampled_logits(sampled));
}

AttentionMass sampled_attention_mass(const SampledQueries& sampled, const at::Tensor& row_max,
                                     const at::Tensor& row_sum, int64_t sequence_length) {
  const std::vector<int64_t> rows{sampled.q_sample.size(0), sampled.q_sample.size(2),
                                  sampled.q_sample.size(1)};
  for (const at::Tensor* stat : {&row_max, &row_sum}) {
    TORCH_CHECK(stat->sizes() == rows && stat->scalar_type() == at::kFloat &&
                    stat->device() == sampled.k.device(),
                "sampled_attention_mass: row_max and row_sum must be fp32 ", at::IntArrayRef(rows),
                " on ", sampled.k.device(), ", got ", stat->scalar_type(), " ", stat->sizes(),
                " on ", stat->device());
  }
  TORCH_CHECK(sampled.k_position_end <= sequence_length &&
                  sampled.first_position + sampled.q_sample.size(1) <= sequence_length,
              "sampled_attention_mass: sequence_length (", sequence_length,
              ") must hold the shard's key positions (up to ", sampled.k_position_end - 1,
              ") and the sampled queries");
  if (sampled.k.is_cuda()) {
    return cuda_ops::sampled_attention_mass_cuda(sampled, row_max.contiguous(),
                                                 row_sum.contiguous(), sequence_length);
  }
  return attention_mass_from_logits(sampled_logits(sampled), row_max.contiguous(),
                                    row_sum.contiguous(), sampled_positions(sampled),
                                    sampled.k_positions, sequence_length);
}

namespace {

// Order-preserving map of a float to uint32 (as kernels/cuda/pattern_select.cu): for non-NaN a,
// b, a < b iff order_key(a) < order_key(b).
uint32_t order_key(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
}

// The CPU twin of the kernel's choice: the top k entries of `row` by order key, ties to the
// lower index, and the first `always` entries.
std::vector<char> chosen_entries(const float* row, int64_t length, int64_t k, int64_t always) {
  std::vector<char> chosen(length, 0);
  if (k > 0) {
    std::vector<uint32_t> keys(length);
    for (int64_t i = 0; i < length; ++i) keys[i] = order_key(row[i]);
    auto sorted = keys;
    std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end(), std::greater<>());
    const uint32_t threshold = sorted[k - 1];
    int64_t take_equal = k - std::count_if(keys.begin(), keys.end(),
                                           [threshold](uint32_t key) { return key > threshold; });
    for (int64_t i = 0; i < length; ++i) {
      chosen[i] = keys[i] > threshold || (keys[i] == threshold && take_equal-- > 0);
    }
  }
  std::fill(chosen.begin(), chosen.begin() + always, 1);
  return chosen;
}

VerticalSlashPattern select_pattern_cpu(const AttentionMass& mass, int64_t num_columns,
                                        int64_t num_diagonals, int64_t sink_tokens,
                                        int64_t local_tokens, int block_size, int64_t width) {
  const auto vertical = mass.vertical.to(at::kFloat).contiguous();
  const auto slash = mass.slash.to(at::kFloat).contiguous();
  const int64_t heads = vertical.size(0), length = vertical.size(1);
  const int64_t num_blocks = length / block_size;
  VerticalSlashPattern pattern;
  pattern.block_size = block_size;
  pattern.sequence_length = length;
  pattern.columns = at::full({heads, width}, -1, at::kLong);
  pattern.block_diagonals = at::zeros({heads, num_blocks}, at::kBool);
  auto columns = pattern.columns.accessor<int64_t, 2>();
  auto offsets = pattern.block_diagonals.accessor<bool, 2>();
  for (int64_t h = 0; h < heads; ++h) {
    const auto column =
        chosen_entries(vertical.data_ptr<float>() + h * length, length, num_columns, sink_tokens);
    for (int64_t i = 0, slot = 0; i < length; ++i) {
      if (column[i]) columns[h][slot++] = i;
    }
    const auto diagonal =
        chosen_entries(slash.data_ptr<float>() + h * length, length, num_diagonals, local_tokens);
    for (int64_t i = 0; i < length; ++i) {
      if (!diagonal[i]) continue;
      const int64_t d = i / block_size;
      if (d < num_blocks) offsets[h][d] = true;
      if (i % block_size != 0 && d + 1 < num_blocks) offsets[h][d + 1] = true;
    }
  }
  return pattern;
}

}  // namespace

VerticalSlashPattern select_pattern(const AttentionMass& mass, int64_t num_columns,
                                    int64_t num_diagonals, int64_t sink_tokens,
                                    int64_t local_tokens, int block_size) {
  TORCH_CHECK(mass.vertical.dim() == 2 && mass.slash.sizes() == mass.vertical.sizes() &&
                  mass.slash.device() == mass.vertical.device(),
              "select_pattern: vertical and slash mass must be [heads, length] on one device, got ",
              mass.vertical.sizes(), " and ", mass.slash.sizes());
  TORCH_CHECK(block_size > 0, "select_pattern: block_size must be positive, got ", block_size);
  const int64_t length = mass.vertical.size(1);
  const auto clamp = [length](int64_t count) { return std::clamp<int64_t>(count, 0, length); };
  num_columns = clamp(num_columns);
  num_diagonals = clamp(num_diagonals);
  sink_tokens = clamp(sink_tokens);
  local_tokens = clamp(local_tokens);
  // The most columns a head can get: the pattern's shape never depends on the mass, so the GPU
  // path needs no host sync to size it.
  const int64_t width = std::min(length, num_columns + sink_tokens);
  if (mass.vertical.is_cuda()) {
    return cuda_ops::select_pattern_cuda(mass, num_columns, num_diagonals, sink_tokens,
                                         local_tokens, block_size, width);
  }
  return select_pattern_cpu(mass, num_columns, num_diagonals, sink_tokens, local_tokens, block_size,
                            width);
}

}  // namespace sparsering::kernels

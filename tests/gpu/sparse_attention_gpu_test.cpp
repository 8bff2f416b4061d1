// GPU kernels against their CPU twin and dense fp64 attention (skipped without a GPU), with and
// without document masking. Outputs are poisoned with NaN before each launch, so any element a
// kernel forgets to write fails.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/sparse_attention_cpu.h"
#include "kernels/sparse_attention.h"
#include "kernels/vertical_slash.h"
#include "parallel/layout.h"
#include "tests/attention_reference.h"

namespace sparsering {
namespace {

struct GpuCase {
  int64_t heads, kv_heads, dim;
  int block;
  config::LayoutKind layout;
  bool sparse;
  at::ScalarType type;
  bool documents = false;  // document masking: two sequences with their own random documents
  int64_t blocks_per_rank = 8;
};

// Document starts of a sequence of `length` tokens: boundaries inside blocks and on block edges,
// a one-token document, and random cuts.
std::vector<int64_t> random_document_starts(int64_t length, int block, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<int64_t> starts = {0, block / 2, block, length / 2 + 3, length / 2 + 4};
  for (int i = 0; i < 6; ++i) {
    starts.push_back(at::randint(1, length, {1}, generator).item<int64_t>());
  }
  std::sort(starts.begin(), starts.end());
  starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
  return starts;
}

// Leaves NaN-filled blocks of exactly the sizes of a forward's outputs in the caching allocator,
// which hands them to the op's next allocations of those sizes (out, then lse): an element the
// kernel does not write stays NaN. Both are held until both exist, so the second is not cut from
// the first's freed block.
void poison_forward_outputs(const at::Tensor& q) {
  const auto out = at::full(q.sizes(), NAN, q.options());
  const auto lse = at::full({q.size(0), q.size(2), q.size(1)}, NAN, q.options().dtype(at::kFloat));
}

class SparseAttentionGpu : public ::testing::TestWithParam<GpuCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  }
};

// Error of a naive implementation in the same dtype: the CPU twin fed with rounded inputs and
// rounded output. The kernel may be at most 2x worse (plus a small floor).
TEST_P(SparseAttentionGpu, MatchesCpuTwinAndDenseReference) {
  const GpuCase c = GetParam();
  const int world = 2, rank = 1;  // the second shard of a 2-rank ring: all pair kinds
  const int64_t blocks = c.blocks_per_rank * world, length = blocks * c.block;
  const int64_t batch = c.documents ? 2 : 1;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dim));
  at::manual_seed(21);
  const auto q = at::randn({batch, length, c.heads, c.dim});
  const auto k = at::randn({batch, length, c.kv_heads, c.dim});
  const auto v = at::randn({batch, length, c.kv_heads, c.dim});
  const auto dout = at::randn({batch, length, c.heads, c.dim});
  parallel::TokenLayout layout(c.layout, blocks, c.block, world);
  kernels::VerticalSlashPattern pattern =
      kernels::dense_pattern(c.heads, length, c.block, at::kCPU);
  if (c.sparse) {
    kernels::AttentionMass mass{at::rand({c.heads, length}), at::rand({c.heads, length})};
    // Two diagonals: most causal blocks stay inactive, so most of the selected columns fall
    // outside the active blocks and reach the kernels' column paths (counted below). With many
    // diagonals every block is active and the index keeps no column.
    pattern = kernels::select_pattern(mass, length / 16, 2, 16, c.block, c.block);
  }
  const auto cuda = at::Device(at::kCUDA);
  const auto q_local = layout.shard(q, rank).contiguous();
  const auto positions = layout.positions_of(rank);
  // Document masking: each sequence's documents, and its queries' key starts.
  std::vector<std::vector<int64_t>> documents;
  at::Tensor key_starts;
  if (c.documents) {
    std::vector<at::Tensor> starts_of_batch;
    for (int64_t b = 0; b < batch; ++b) {
      documents.push_back(random_document_starts(length, c.block, 100 + b));
      starts_of_batch.push_back(
          testing::document_key_starts(documents.back(), length).index_select(0, positions));
    }
    key_starts = at::stack(starts_of_batch).contiguous();
  }
  auto out_acc_gpu = at::zeros(q_local.sizes(), at::TensorOptions().device(cuda));
  auto lse_acc_gpu =
      at::full({batch, c.heads, q_local.size(1)}, -INFINITY, at::TensorOptions().device(cuda));
  auto out_acc_cpu = at::zeros(q_local.sizes());
  auto lse_acc_cpu = at::full({batch, c.heads, q_local.size(1)}, -INFINITY);
  std::vector<std::tuple<kernels::ShardBlocks, kernels::SparseIndex, at::Tensor, at::Tensor>> pairs;
  int64_t columns = 0;  // gathered column keys of both pairs' indexes
  for (int source = 0; source < world; ++source) {
    kernels::ShardBlocks blocks_cpu{layout.blocks_of(rank), layout.blocks_of(source), key_starts};
    // With documents, source 0 keeps the unpruned index: its kv blocks before a query block's
    // documents reach the kernels, whose tile skipping and elementwise mask must drop them.
    kernels::ShardBlocks index_blocks = blocks_cpu;
    if (source == 0) index_blocks.q_key_starts = at::Tensor();
    const auto index_cpu = kernels::build_sparse_index(pattern, index_blocks, batch, c.kv_heads,
                                                       kernels::Transpose::kBlocksAndColumns);
    columns += index_cpu.column_indices.numel();
    kernels::ShardBlocks blocks_gpu{blocks_cpu.q_block_ids.to(cuda),
                                    blocks_cpu.k_block_ids.to(cuda),
                                    key_starts.defined() ? key_starts.to(cuda) : at::Tensor()};
    kernels::SparseIndex index_gpu = index_cpu;
    for (at::Tensor* t :
         {&index_gpu.block_row_offsets, &index_gpu.block_cols, &index_gpu.column_row_offsets,
          &index_gpu.column_indices, &index_gpu.t_block_row_offsets, &index_gpu.t_block_entries,
          &index_gpu.t_column_row_offsets, &index_gpu.t_column_entries, &index_gpu.t_column_keys}) {
      *t = t->to(cuda);
    }
    const auto k_shard = layout.shard(k, source).contiguous();
    const auto v_shard = layout.shard(v, source).contiguous();
    // Reference in fp32 on the same rounded inputs.
    const auto part_cpu = kernels::cpu::sparse_attention_forward_cpu(
        q_local.to(c.type).to(at::kFloat), k_shard.to(c.type).to(at::kFloat),
        v_shard.to(c.type).to(at::kFloat), blocks_cpu, index_cpu, scale);
    kernels::cpu::lse_merge_cpu(out_acc_cpu, lse_acc_cpu, part_cpu.out, part_cpu.lse);
    const auto q_gpu = q_local.to(c.type).to(cuda);
    const auto k_gpu = k_shard.to(c.type).to(cuda), v_gpu = v_shard.to(c.type).to(cuda);
    poison_forward_outputs(q_gpu);
    const auto part_gpu =
        kernels::sparse_attention_forward(q_gpu, k_gpu, v_gpu, blocks_gpu, index_gpu, scale);
    EXPECT_FALSE(at::isnan(part_gpu.out).any().item<bool>());
    EXPECT_FALSE(at::isnan(part_gpu.lse).any().item<bool>());
    kernels::lse_merge(out_acc_gpu, lse_acc_gpu, part_gpu.out, part_gpu.lse);
    pairs.emplace_back(blocks_gpu, index_gpu, k_shard, v_shard);
  }
  if (c.sparse) {
    ASSERT_GT(columns, 0) << "a sparse case must reach the column paths";
  }
  // Dense fp64 truth for this rank's queries against the whole sequence, with the pattern's
  // global mask (and each sequence's documents); its k/v gradients are exactly this rank's
  // contributions.
  auto mask = testing::global_pattern_mask(pattern).index_select(1, positions).unsqueeze(0);
  if (c.documents) {
    std::vector<at::Tensor> per_sequence;
    for (const auto& starts : documents) {
      per_sequence.push_back(mask[0].logical_and(
          testing::same_document_mask(starts, length).index_select(0, positions).unsqueeze(0)));
    }
    mask = at::stack(per_sequence);
  }
  auto q64 = q_local.to(c.type).to(at::kDouble).requires_grad_(true);
  auto k64 = k.to(c.type).to(at::kDouble).requires_grad_(true);
  auto v64 = v.to(c.type).to(at::kDouble).requires_grad_(true);
  const auto dout_local64 = layout.shard(dout, rank).to(c.type).to(at::kDouble);
  auto [ref_out, ref_lse] = testing::reference_attention(q64, k64, v64, mask, scale);
  (ref_out * dout_local64).sum().backward();
  const double naive_error = testing::max_abs_diff(out_acc_cpu.to(c.type), ref_out);
  const double gpu_error = testing::max_abs_diff(out_acc_gpu, ref_out);
  EXPECT_LE(gpu_error, 2 * naive_error + 1e-3) << "naive " << naive_error;
  const auto attended = mask.any(-1);
  EXPECT_LT(testing::max_abs_diff(lse_acc_gpu.masked_fill(attended.logical_not().to(cuda), 0),
                                  ref_lse.masked_fill(attended.logical_not(), 0)),
            1e-2);

  // Backward over both shards with the final lse, atomic and deterministic. bf16 rounding of P
  // and dS (as FlashAttention) bounds the error relative to the gradient's scale.
  const auto out_final = out_acc_gpu.to(c.type).contiguous();
  const auto dout_local = dout_local64.to(c.type).to(cuda).contiguous();
  const auto delta = kernels::attention_delta(dout_local, out_final);
  auto relative_error = [](const at::Tensor& got, const at::Tensor& truth) {
    return testing::max_abs_diff(got, truth) / (truth.abs().max().item<double>() + 1e-12);
  };
  // The deterministic gradients of the first pass, to compare the second pass with bitwise.
  std::vector<at::Tensor> first_pass;
  for (int pass = 0; pass < 3; ++pass) {
    const bool deterministic = pass > 0;
    SCOPED_TRACE(deterministic ? "deterministic" : "atomic");
    auto dq = at::full(q_local.sizes(), NAN, at::TensorOptions().device(cuda)).zero_();
    std::vector<at::Tensor> gradients;
    for (int source = 0; source < world; ++source) {
      auto& [blocks_gpu, index_gpu, k_shard, v_shard] = pairs[source];
      // dk and dv start at 1: the kernels add into them.
      auto dk = at::ones(k_shard.sizes(), at::TensorOptions().device(cuda));
      auto dv = at::ones(v_shard.sizes(), at::TensorOptions().device(cuda));
      kernels::sparse_attention_backward(dout_local, q_local.to(c.type).to(cuda),
                                         k_shard.to(c.type).to(cuda), v_shard.to(c.type).to(cuda),
                                         out_final, lse_acc_gpu, delta, blocks_gpu, index_gpu,
                                         scale, deterministic, dq, dk, dv);
      EXPECT_LT(relative_error(dk - 1, layout.shard(k64.grad(), source)), 0.03) << "dk " << source;
      EXPECT_LT(relative_error(dv - 1, layout.shard(v64.grad(), source)), 0.03) << "dv " << source;
      gradients.insert(gradients.end(), {dk, dv});
    }
    EXPECT_LT(relative_error(dq, q64.grad()), 0.03) << "dq";
    gradients.push_back(dq);
    if (pass == 1) first_pass = gradients;
    if (pass == 2) {
      for (size_t i = 0; i < gradients.size(); ++i) {
        EXPECT_TRUE(gradients[i].equal(first_pass[i])) << "deterministic rerun, tensor " << i;
      }
    }
  }
  if (c.documents) {
    // Rows whose documents hide every key: exactly out 0 and lse -inf, as the twin gives.
    EXPECT_TRUE(at::isneginf(lse_acc_gpu).cpu().equal(attended.logical_not()));
    EXPECT_TRUE(out_acc_gpu.cpu()
                    .masked_select(attended.logical_not().permute({0, 2, 1}).unsqueeze(-1))
                    .eq(0)
                    .all()
                    .item<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SparseAttentionGpu,
    ::testing::Values(GpuCase{4, 4, 64, 64, config::LayoutKind::kContiguous, false, at::kBFloat16},
                      GpuCase{8, 2, 128, 64, config::LayoutKind::kBalanced, true, at::kBFloat16},
                      GpuCase{4, 1, 128, 128, config::LayoutKind::kZigzag, true, at::kHalf},
                      GpuCase{4, 2, 64, 128, config::LayoutKind::kBalanced, false, at::kBFloat16},
                      // head dim 128 with 128-token blocks (this and the zigzag case above): the
                      // wgmma forward and backward, GQA 4:1
                      GpuCase{8, 2, 128, 128, config::LayoutKind::kBalanced, false, at::kBFloat16},
                      GpuCase{4, 4, 128, 128, config::LayoutKind::kContiguous, true, at::kBFloat16},
                      // head dim 64 with 128-token blocks (and the dense case above): the wgmma
                      // kernels at head dim 64, GQA 4:1, bf16 and fp16
                      GpuCase{8, 2, 64, 128, config::LayoutKind::kZigzag, true, at::kBFloat16},
                      GpuCase{4, 4, 64, 128, config::LayoutKind::kBalanced, true, at::kHalf},
                      // 32 heads x 20 query blocks: the deterministic column pass walks its
                      // entries in more than one window of 512 entry ids
                      GpuCase{32, 8, 64, 64, config::LayoutKind::kContiguous, true, at::kBFloat16,
                              false, 20}));

// Document masking through every kernel path: both block sizes and head dims, dense and sparse
// (vertical columns), fp16 and bf16. The forward runs wgmma for every shape here except head dim
// 128 with 64-token blocks (mma.sync).
INSTANTIATE_TEST_SUITE_P(
    Documents, SparseAttentionGpu,
    ::testing::Values(
        GpuCase{4, 4, 64, 64, config::LayoutKind::kContiguous, false, at::kBFloat16, true},
        GpuCase{8, 2, 128, 64, config::LayoutKind::kBalanced, true, at::kBFloat16, true},
        GpuCase{4, 1, 128, 128, config::LayoutKind::kZigzag, true, at::kHalf, true},
        GpuCase{4, 2, 64, 128, config::LayoutKind::kBalanced, false, at::kBFloat16, true},
        GpuCase{4, 2, 128, 128, config::LayoutKind::kContiguous, true, at::kBFloat16, true},
        GpuCase{8, 2, 64, 128, config::LayoutKind::kBalanced, true, at::kHalf, true},
        // the 1.1B config's shape: head dim 64, 64-token blocks, sparse, GQA 4:1
        GpuCase{8, 2, 64, 64, config::LayoutKind::kZigzag, true, at::kHalf, true}));

}  // namespace
}  // namespace sparsering

// The index-building kernels (kernels/cuda/sparse_index.cu) against their reference twin
// (kernels/cpu/sparse_index_cpu.cpp) on the same pattern: every tensor of the index must be equal,
// entry for entry, under every token layout, GQA ratio, block size and document mask, from a
// small ring shard to one GPU's 128K-token sequence. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>
#include <vector>

#include "kernels/vertical_slash.h"
#include "parallel/layout.h"

namespace sparsering {
namespace {

struct IndexCase {
  int64_t heads, kv_heads;
  int block;
  int64_t blocks;  // global blocks of the sequence
  int world;       // shards of the layout; every (query shard, kv shard) pair is checked
  config::LayoutKind layout;
  int64_t batch;
  bool documents;  // per-sequence document key starts
  kernels::Transpose transpose;
};

class SparseIndexGpu : public ::testing::TestWithParam<IndexCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  }
};

// Leaves int32 blocks filled with -7 of the outputs' likely sizes in the caching allocator, so an
// entry the kernels do not write shows up as a difference.
void poison_int32(const kernels::SparseIndex& like) {
  std::vector<at::Tensor> held;
  for (const at::Tensor* t :
       {&like.block_row_offsets, &like.block_cols, &like.column_row_offsets, &like.column_indices,
        &like.t_block_row_offsets, &like.t_block_entries}) {
    if (t->defined()) held.push_back(at::full(t->sizes(), -7, t->options().device(at::kCUDA)));
  }
}

void expect_equal(const at::Tensor& gpu, const at::Tensor& cpu, const char* what) {
  ASSERT_EQ(gpu.defined(), cpu.defined()) << what;
  if (!cpu.defined()) return;
  EXPECT_EQ(gpu.scalar_type(), at::kInt) << what;
  EXPECT_TRUE(gpu.cpu().equal(cpu))
      << what << ": " << gpu.numel() << " vs " << cpu.numel() << " entries";
}

void expect_same_index(const kernels::SparseIndex& got, const kernels::SparseIndex& expected) {
  EXPECT_EQ(got.block_size, expected.block_size);
  expect_equal(got.block_row_offsets, expected.block_row_offsets, "block_row_offsets");
  expect_equal(got.block_cols, expected.block_cols, "block_cols");
  expect_equal(got.column_row_offsets, expected.column_row_offsets, "column_row_offsets");
  expect_equal(got.column_indices, expected.column_indices, "column_indices");
  expect_equal(got.t_block_row_offsets, expected.t_block_row_offsets, "t_block_row_offsets");
  expect_equal(got.t_block_entries, expected.t_block_entries, "t_block_entries");
  expect_equal(got.t_column_row_offsets, expected.t_column_row_offsets, "t_column_row_offsets");
  expect_equal(got.t_column_entries, expected.t_column_entries, "t_column_entries");
  expect_equal(got.t_column_keys, expected.t_column_keys, "t_column_keys");
}

TEST_P(SparseIndexGpu, EqualsReferenceTwin) {
  const IndexCase c = GetParam();
  const int64_t length = c.blocks * c.block;
  at::manual_seed(static_cast<uint64_t>(c.blocks * 7 + c.heads));
  // Random mass, plus one head whose strongest columns fill a whole block (a column block).
  kernels::AttentionMass mass{at::rand({c.heads, length}), at::rand({c.heads, length})};
  mass.vertical[c.heads - 1].slice(0, 3 * c.block, 4 * c.block).add_(2.0);
  const auto pattern =
      kernels::select_pattern(mass, std::max<int64_t>(length / 16, c.block), length / c.block / 4,
                              /*sink_tokens=*/c.block + 3, /*local_tokens=*/2 * c.block, c.block);
  kernels::VerticalSlashPattern pattern_gpu = pattern;
  pattern_gpu.columns = pattern.columns.cuda();
  pattern_gpu.block_diagonals = pattern.block_diagonals.cuda();
  parallel::TokenLayout layout(c.layout, c.blocks, c.block, c.world);
  const int64_t q_tokens = layout.blocks_per_rank() * c.block;

  int64_t checked_blocks = 0, checked_columns = 0;
  for (int qr = 0; qr < c.world; ++qr) {
    at::Tensor key_starts;
    if (c.documents) {
      // Documents of 4-14 blocks per sequence, as key starts: long enough that columns outside
      // the local band stay visible.
      const auto positions = layout.positions_of(qr);
      key_starts = at::empty({c.batch, q_tokens}, at::kInt);
      for (int64_t b = 0; b < c.batch; ++b) {
        const int64_t document = c.block * (4 + b + at::randint(8, {1}).item<int64_t>());
        key_starts[b] = at::div(positions, document, "floor").mul(document).to(at::kInt);
      }
    }
    for (int kr = 0; kr < c.world; ++kr) {
      const kernels::ShardBlocks cpu_blocks{layout.blocks_of(qr), layout.blocks_of(kr), key_starts};
      const kernels::ShardBlocks gpu_blocks{
          cpu_blocks.q_block_ids.cuda(), cpu_blocks.k_block_ids.cuda(),
          key_starts.defined() ? key_starts.cuda() : at::Tensor()};
      const auto expected =
          kernels::build_sparse_index(pattern, cpu_blocks, c.batch, c.kv_heads, c.transpose);
      poison_int32(expected);
      const auto got =
          kernels::build_sparse_index(pattern_gpu, gpu_blocks, c.batch, c.kv_heads, c.transpose);
      expect_same_index(got, expected);
      checked_blocks += expected.num_blocks();
      checked_columns += expected.num_columns();
    }
  }
  // Guards against a vacuous comparison: both parts of the index carry entries.
  EXPECT_GT(checked_blocks, 0);
  EXPECT_GT(checked_columns, 0);
}

// The dense pattern (every causal block, no columns: empty column rows) through both builders.
TEST(SparseIndexGpuDense, EqualsReferenceTwin) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const auto ids = at::arange(16, at::kInt);
  const kernels::ShardBlocks cpu_blocks{ids, ids, {}};
  const kernels::ShardBlocks gpu_blocks{ids.cuda(), ids.cuda(), {}};
  const auto expected =
      kernels::build_sparse_index(kernels::dense_pattern(4, 16 * 64, 64, at::kCPU), cpu_blocks, 2,
                                  2, kernels::Transpose::kBlocksAndColumns);
  const auto got =
      kernels::build_sparse_index(kernels::dense_pattern(4, 16 * 64, 64, at::kCUDA), gpu_blocks, 2,
                                  2, kernels::Transpose::kBlocksAndColumns);
  EXPECT_EQ(expected.num_blocks(), 2 * 4 * 16 * 17 / 2);
  EXPECT_EQ(expected.num_columns(), 0);
  expect_same_index(got, expected);
}

using config::LayoutKind;
using kernels::Transpose;
INSTANTIATE_TEST_SUITE_P(
    Shapes, SparseIndexGpu,
    ::testing::Values(
        // Ring shards under each layout, GQA 4:1, transposed blocks and columns.
        IndexCase{8, 2, 64, 48, 4, LayoutKind::kBalanced, 1, false, Transpose::kBlocksAndColumns},
        IndexCase{8, 2, 64, 48, 4, LayoutKind::kZigzag, 2, false, Transpose::kBlocksAndColumns},
        IndexCase{8, 8, 128, 36, 3, LayoutKind::kContiguous, 1, false, Transpose::kBlocks},
        // Document masks (rows differ per sequence), MQA, a row count not a multiple of 32.
        IndexCase{4, 1, 64, 40, 2, LayoutKind::kBalanced, 3, true, Transpose::kBlocksAndColumns},
        IndexCase{8, 2, 128, 24, 2, LayoutKind::kZigzag, 2, true, Transpose::kNone},
        // One GPU at 128K tokens, 32 heads, 128-token blocks, GQA 4:1.
        IndexCase{32, 8, 128, 1024, 1, LayoutKind::kContiguous, 1, false, Transpose::kBlocks},
        // The 1.1B config's 64-token blocks at 64K tokens with documents.
        IndexCase{32, 32, 64, 1024, 1, LayoutKind::kContiguous, 1, true, Transpose::kBlocks}));

}  // namespace
}  // namespace sparsering

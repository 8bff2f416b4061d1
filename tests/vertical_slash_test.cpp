// Vertical-slash patterns: selection, and the index of every (query shard, kv shard) pair under
// every layout against the pattern's global token mask written out from its definition.
#include "kernels/vertical_slash.h"

#include <gtest/gtest.h>

#include "kernels/cpu/sparse_attention_cpu.h"
#include "parallel/layout.h"
#include "tests/attention_reference.h"

namespace sparsering {
namespace {

TEST(SelectPattern, KeepsTopColumnsDiagonalsSinkAndLocal) {
  const int64_t length = 128;
  const int block = 16;
  kernels::AttentionMass mass{at::rand({1, length}) * 0.01, at::rand({1, length}) * 0.01};
  mass.vertical[0][37] = 5.0;
  mass.slash[0][70] = 5.0;
  const auto p = kernels::select_pattern(mass, /*num_columns=*/1, /*num_diagonals=*/1,
                                         /*sink_tokens=*/2, /*local_tokens=*/1, block);
  EXPECT_TRUE(p.columns.equal(at::tensor({0, 1, 37}, at::kLong).view({1, 3})));
  // Diagonal 70 crosses block offsets 4 ([49, 79]) and 5 ([65, 95]); diagonal 0 offset 0 only.
  std::vector<bool> expected(length / block, false);
  expected[0] = expected[4] = expected[5] = true;
  for (int64_t d = 0; d < length / block; ++d) {
    EXPECT_EQ(p.block_diagonals[0][d].item<bool>(), expected[d]) << "offset " << d;
  }
}

TEST(AttentionMass, EveryQueryContributesOneUnitOfMass) {
  at::manual_seed(5);
  const int64_t length = 64, samples = 8;
  const auto q = at::randn({2, samples, 4, 8}), k = at::randn({2, length, 2, 8});
  const auto positions = at::arange(length, at::kLong);
  const auto q_positions = positions.slice(0, length - samples);
  const auto logits = kernels::sample_logits(q, q_positions, k, positions, 0.3);
  const auto mass =
      kernels::attention_mass(at::softmax(logits, -1), q_positions, positions, length);
  // 2 batches x 8 queries, each a distribution over keys, per head.
  EXPECT_TRUE(at::allclose(mass.vertical.sum(1), at::full({4}, 16.0), 1e-4));
  EXPECT_TRUE(at::allclose(mass.slash.sum(1), at::full({4}, 16.0), 1e-4));
}

class IndexUnderLayout : public ::testing::TestWithParam<config::LayoutKind> {};

TEST_P(IndexUnderLayout, PairIndicesTileTheGlobalMask) {
  const int world = 3, block = 8;
  const int64_t blocks = 2 * world * 3, length = blocks * block, heads = 4, kv_heads = 2;
  at::manual_seed(11);
  kernels::AttentionMass mass{at::rand({heads, length}), at::rand({heads, length})};
  const auto pattern = kernels::select_pattern(mass, 10, 12, 3, 5, block);
  const auto global = testing::global_pattern_mask(pattern);
  parallel::TokenLayout layout(GetParam(), blocks, block, world);
  for (int qr = 0; qr < world; ++qr) {
    for (int kr = 0; kr < world; ++kr) {
      const kernels::ShardBlocks shard{layout.blocks_of(qr), layout.blocks_of(kr)};
      const auto index = kernels::build_sparse_index(pattern, shard, /*batch=*/2, kv_heads,
                                                     kernels::Transpose::kBlocksAndColumns);
      const int64_t local = layout.blocks_per_rank() * block;
      const auto mask = kernels::cpu::attention_mask(shard, index, 2, heads, local, local);
      const auto expected =
          global.index_select(1, layout.positions_of(qr)).index_select(2, layout.positions_of(kr));
      EXPECT_TRUE(mask[0].equal(expected)) << "pair " << qr << "," << kr;
      EXPECT_TRUE(mask[1].equal(expected));
      // Columns never repeat a key already inside one of the row's active blocks.
      const auto rows_blocks = index.block_row_offsets;
      for (int64_t row = 0; row + 1 < rows_blocks.numel(); ++row) {
        for (int c = index.column_row_offsets[row].item<int>();
             c < index.column_row_offsets[row + 1].item<int>(); ++c) {
          const int key_block = index.column_indices[c].item<int>() / block;
          for (int b = rows_blocks[row].item<int>(); b < rows_blocks[row + 1].item<int>(); ++b) {
            EXPECT_NE(index.block_cols[b].item<int>(), key_block);
          }
        }
      }
      // The transposed index lists the same (query row, key) incidences.
      EXPECT_EQ(index.t_block_entries.numel(), index.block_cols.numel());
      EXPECT_EQ(index.t_column_entries.numel(), index.column_indices.numel());
      EXPECT_EQ(index.t_block_row_offsets[-1].item<int>(), index.block_cols.numel());
      EXPECT_EQ(index.t_column_row_offsets[-1].item<int>(), index.column_indices.numel());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, IndexUnderLayout,
                         ::testing::Values(config::LayoutKind::kContiguous,
                                           config::LayoutKind::kZigzag,
                                           config::LayoutKind::kBalanced));

TEST(DensePattern, IndexesEveryCausalBlock) {
  const int block = 4;
  const auto pattern = kernels::dense_pattern(2, 32, block, at::kCPU);
  const auto ids = at::arange(8, at::kInt);
  const auto index =
      kernels::build_sparse_index(pattern, {ids, ids}, 1, 1, kernels::Transpose::kNone);
  EXPECT_EQ(index.num_blocks(), 2 * 8 * 9 / 2);
  EXPECT_EQ(index.num_columns(), 0);
}

}  // namespace
}  // namespace sparsering

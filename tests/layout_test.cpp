// Token layouts: every layout is a permutation of the blocks, shard/unshard round-trip, and the
// balanced layout evens out causal work where contiguous does not. The plain parts of ring steps
// (what the dense ring hands to cuDNN) cover exactly the visible token pairs, each once.
#include "parallel/layout.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "parallel/plain_steps.h"

namespace sparsering {
namespace {

using config::LayoutKind;

class LayoutTest : public ::testing::TestWithParam<LayoutKind> {};

TEST_P(LayoutTest, IsABlockPermutationAndRoundTrips) {
  const int world = 4, block = 3;
  parallel::TokenLayout layout(GetParam(), 16, block, world);
  std::vector<int> seen(16, 0);
  for (int r = 0; r < world; ++r) {
    const auto ids = layout.blocks_of(r);
    ASSERT_EQ(ids.numel(), 4);
    for (int64_t i = 0; i < ids.numel(); ++i) {
      const int id = ids[i].item<int>();
      ++seen[id];
      EXPECT_EQ(layout.owner_of(id), std::make_pair(r, i));
    }
  }
  for (int count : seen) EXPECT_EQ(count, 1);
  const auto sequence = at::arange(2 * 48, at::kLong).view({2, 48});
  std::vector<at::Tensor> shards;
  for (int r = 0; r < world; ++r) {
    const auto shard = layout.shard(sequence, r);
    EXPECT_TRUE(shard[0].equal(layout.positions_of(r)));
    shards.push_back(shard);
  }
  EXPECT_TRUE(layout.unshard(at::stack(shards)).equal(sequence));
}

INSTANTIATE_TEST_SUITE_P(All, LayoutTest,
                         ::testing::Values(LayoutKind::kContiguous, LayoutKind::kZigzag,
                                           LayoutKind::kBalanced));

TEST(Layout, ShapesOfEachKind) {
  EXPECT_TRUE(parallel::TokenLayout(LayoutKind::kContiguous, 8, 1, 2)
                  .blocks_of(1)
                  .equal(at::tensor({4, 5, 6, 7}, at::kInt)));
  EXPECT_TRUE(parallel::TokenLayout(LayoutKind::kZigzag, 8, 1, 2)
                  .blocks_of(0)
                  .equal(at::tensor({0, 1, 6, 7}, at::kInt)));
  EXPECT_TRUE(parallel::TokenLayout(LayoutKind::kBalanced, 8, 1, 2)
                  .blocks_of(1)
                  .equal(at::tensor({1, 3, 5, 7}, at::kInt)));
  EXPECT_THROW(parallel::TokenLayout(LayoutKind::kZigzag, 6, 1, 2), std::invalid_argument);
  EXPECT_THROW(parallel::TokenLayout(LayoutKind::kBalanced, 7, 1, 2), std::invalid_argument);
}

TEST(Layout, DenseCausalWorkPerRank) {
  // Causal work of a rank = sum over its blocks of (global id + 1).
  auto imbalance = [](LayoutKind kind) {
    parallel::TokenLayout layout(kind, 512, 1, 8);
    std::vector<double> work;
    for (int r = 0; r < 8; ++r)
      work.push_back((layout.blocks_of(r).to(at::kDouble) + 1).sum().item<double>());
    const double mean = std::accumulate(work.begin(), work.end(), 0.0) / work.size();
    return *std::max_element(work.begin(), work.end()) / mean;
  };
  EXPECT_GT(imbalance(LayoutKind::kContiguous), 1.8);
  EXPECT_DOUBLE_EQ(imbalance(LayoutKind::kZigzag), 1.0);
  EXPECT_LT(imbalance(LayoutKind::kBalanced), 1.02);
}

TEST_P(LayoutTest, PlainPartsCoverEveryVisiblePairOnce) {
  const int world = 4, block = 2;
  parallel::TokenLayout layout(GetParam(), 32, block, world);
  int plain_steps = 0;
  size_t most_parts = 0;
  for (int rank = 0; rank < world; ++rank) {
    for (int source = 0; source < world; ++source) {
      SCOPED_TRACE("queries of rank " + std::to_string(rank) + ", keys of " +
                   std::to_string(source));
      // The token mask of the step, local query token x local key token.
      const auto mask =
          layout.positions_of(source).unsqueeze(0) <= layout.positions_of(rank).unsqueeze(1);
      const auto parts =
          parallel::plain_parts(layout.blocks_of(rank), layout.blocks_of(source), block);
      if (!parts) {
        EXPECT_NE(GetParam(), LayoutKind::kZigzag) << "zigzag steps are all plain";
        continue;
      }
      ++plain_steps;
      most_parts = std::max(most_parts, parts->size());
      EXPECT_LE(parts->size(), parallel::kMaxPlainParts);
      // How many parts cover each pair: exactly the visible ones, once.
      auto covered = at::zeros(mask.sizes(), at::kInt);
      for (const auto& part : *parts) {
        auto rect = covered.slice(0, part.q_begin, part.q_end).slice(1, part.k_begin, part.k_end);
        ASSERT_TRUE(part.mask == kernels::PlainMask::kFull || rect.size(0) == rect.size(1));
        rect.add_(part.mask == kernels::PlainMask::kCausal ? at::ones_like(rect).tril()
                                                           : at::ones_like(rect));
      }
      EXPECT_TRUE(at::equal(covered, mask.to(at::kInt)));
      // Block pairs of the dense pattern: key block at or before the query block.
      const auto q_ids = layout.blocks_of(rank).unsqueeze(1), k_ids = layout.blocks_of(source);
      EXPECT_EQ(parallel::causal_block_pairs(layout.blocks_of(rank), layout.blocks_of(source)),
                (k_ids.unsqueeze(0) <= q_ids).sum().item<int64_t>());
    }
  }
  // Contiguous and zigzag steps all split into plain parts (zigzag's cross steps into two at
  // most); the balanced layout's stripes only against themselves.
  EXPECT_EQ(plain_steps, GetParam() == LayoutKind::kBalanced ? world : world * world);
  if (GetParam() == LayoutKind::kZigzag) {
    EXPECT_EQ(most_parts, 2u);
  }
}

}  // namespace
}  // namespace sparsering

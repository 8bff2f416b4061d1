// The CPU twin of the block-sparse attention kernels against dense fp64 attention with an explicit
// mask built independently from the index (random indices, GQA, empty rows, permuted layouts).
#include "kernels/sparse_attention.h"

#include <gtest/gtest.h>

#include "tests/attention_reference.h"

namespace sparsering {
namespace {

struct Problem {
  at::Tensor q, k, v;
  kernels::ShardBlocks blocks;
  kernels::SparseIndex index;
  at::Tensor mask;  // [B, H, Sq, Sk], written out from the index definition
};

// A random index over permuted global blocks: each row keeps a random subset of its causal blocks
// and a few random columns outside them; some rows are left empty on purpose.
Problem random_problem(int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_blocks,
                       int64_t k_blocks, int block, int64_t dim, at::ScalarType type,
                       double keep_probability, uint64_t seed) {
  at::manual_seed(seed);
  Problem p;
  const int64_t total_blocks = q_blocks + k_blocks;
  const auto ids = at::randperm(total_blocks, at::kLong);
  p.blocks.q_block_ids = ids.slice(0, 0, q_blocks).to(at::kInt);
  p.blocks.k_block_ids = ids.slice(0, q_blocks).to(at::kInt);
  const int64_t q_tokens = q_blocks * block, k_tokens = k_blocks * block;
  p.q = at::randn({batch, q_tokens, heads, dim}).to(type);
  p.k = at::randn({batch, k_tokens, kv_heads, dim}).to(type);
  p.v = at::randn({batch, k_tokens, kv_heads, dim}).to(type);
  p.mask = at::zeros({batch, heads, q_tokens, k_tokens}, at::kBool);
  std::vector<int32_t> block_offsets = {0}, block_cols, column_offsets = {0}, columns;
  const auto q_ids = p.blocks.q_block_ids.to(at::kLong), k_ids = p.blocks.k_block_ids.to(at::kLong);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t qb = 0; qb < q_blocks; ++qb) {
        const int64_t qg = q_ids[qb].item<int64_t>();
        const bool empty_row = (qb + h) % 5 == 4;
        std::vector<bool> active(k_blocks, false);
        for (int64_t kb = 0; kb < k_blocks && !empty_row; ++kb) {
          if (k_ids[kb].item<int64_t>() <= qg && at::rand({1}).item<double>() < keep_probability) {
            active[kb] = true;
            block_cols.push_back(kb);
          }
        }
        for (int64_t kt = 0; kt < k_tokens && !empty_row; ++kt) {
          if (!active[kt / block] && at::rand({1}).item<double>() < 0.05) columns.push_back(kt);
        }
        block_offsets.push_back(block_cols.size());
        column_offsets.push_back(columns.size());
        // The mask by definition: causal by global position, key in an active block or listed.
        for (int64_t i = 0; i < block; ++i) {
          const int64_t q_pos = qg * block + i, row = qb * block + i;
          for (int64_t kt = 0; kt < k_tokens; ++kt) {
            const int64_t k_pos = k_ids[kt / block].item<int64_t>() * block + kt % block;
            bool listed = active[kt / block];
            for (int32_t c = column_offsets[column_offsets.size() - 2]; c < column_offsets.back();
                 ++c) {
              listed = listed || columns[c] == kt;
            }
            if (listed && k_pos <= q_pos) p.mask[b][h][row][kt] = true;
          }
        }
      }
    }
  }
  p.index.block_size = block;
  p.index.block_row_offsets = at::tensor(block_offsets, at::kInt);
  p.index.block_cols = at::tensor(block_cols, at::kInt);
  p.index.column_row_offsets = at::tensor(column_offsets, at::kInt);
  p.index.column_indices = at::tensor(columns, at::kInt);
  return p;
}

class SparseAttentionCpu : public ::testing::TestWithParam<std::tuple<int64_t, double>> {};

TEST_P(SparseAttentionCpu, ForwardAndBackwardMatchDenseReference) {
  const auto [kv_heads, keep] = GetParam();
  const int64_t heads = 4, dim = 8, batch = 2;
  const int block = 4;
  auto p = random_problem(batch, heads, kv_heads, 3, 4, block, dim, at::kFloat, keep, 42);
  const double scale = 0.35;
  auto result = kernels::sparse_attention_forward(p.q, p.k, p.v, p.blocks, p.index, scale);

  auto q64 = p.q.to(at::kDouble).requires_grad_(true);
  auto k64 = p.k.to(at::kDouble).requires_grad_(true);
  auto v64 = p.v.to(at::kDouble).requires_grad_(true);
  auto [ref_out, ref_lse] = testing::reference_attention(q64, k64, v64, p.mask, scale);
  EXPECT_LT(testing::max_abs_diff(result.out, ref_out), 1e-5);
  // lse: equal where some key is attended, -inf exactly where none is.
  const auto attended = p.mask.any(-1);
  EXPECT_TRUE(at::isinf(result.lse).equal(attended.logical_not()));
  EXPECT_LT(testing::max_abs_diff(result.lse.masked_fill(attended.logical_not(), 0),
                                  ref_lse.masked_fill(attended.logical_not(), 0)),
            1e-5);
  EXPECT_FALSE(at::isnan(result.out).any().item<bool>());

  const auto dout = at::randn(p.q.sizes());
  (ref_out * dout.to(at::kDouble)).sum().backward();
  // Accumulators start poisoned-free at a known value so "adds into" is checked too.
  auto dq = at::full(p.q.sizes(), 0.5), dk = at::full(p.k.sizes(), -0.25),
       dv = at::full(p.v.sizes(), 1.0);
  const auto delta = kernels::attention_delta(dout, result.out);
  kernels::sparse_attention_backward(dout, p.q, p.k, p.v, result.out, result.lse, delta, p.blocks,
                                     p.index, scale, false, dq, dk, dv);
  EXPECT_LT(testing::max_abs_diff(dq - 0.5, q64.grad()), 1e-5);
  EXPECT_LT(testing::max_abs_diff(dk + 0.25, k64.grad()), 1e-5);
  EXPECT_LT(testing::max_abs_diff(dv - 1.0, v64.grad()), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(GqaAndDensity, SparseAttentionCpu,
                         ::testing::Values(std::make_tuple(4, 0.5), std::make_tuple(2, 0.3),
                                           std::make_tuple(1, 1.0), std::make_tuple(2, 0.0)));

TEST(LseMerge, EqualsAttentionOverTheUnionOfKeys) {
  // Two disjoint key sets attended separately and merged = one attention over both.
  at::manual_seed(3);
  const auto q = at::randn({1, 8, 2, 4}), k = at::randn({1, 16, 2, 4}),
             v = at::randn({1, 16, 2, 4});
  auto mask_a = at::rand({1, 2, 8, 16}) < 0.4;
  mask_a.select(2, 0).fill_(false);  // a row empty on side a only
  auto mask_b = mask_a.logical_not();
  mask_b.select(2, 1).fill_(false);  // a row empty on side b only
  const auto [out_a, lse_a] = testing::reference_attention(q, k, v, mask_a, 0.5);
  const auto [out_b, lse_b] = testing::reference_attention(q, k, v, mask_b, 0.5);
  const auto [out_ab, lse_ab] =
      testing::reference_attention(q, k, v, mask_a.logical_or(mask_b), 0.5);
  auto out = out_a.to(at::kFloat).contiguous();
  auto lse = lse_a.to(at::kFloat).contiguous();
  kernels::lse_merge(out, lse, out_b.to(at::kFloat), lse_b.to(at::kFloat));
  EXPECT_LT(testing::max_abs_diff(out, out_ab), 1e-5);
  EXPECT_LT(testing::max_abs_diff(lse, lse_ab), 1e-5);
}

TEST(LseMerge, BothSidesEmptyStaysEmptyWithoutNaN) {
  auto out = at::zeros({1, 2, 1, 4});
  auto lse = at::full({1, 1, 2}, -INFINITY);
  kernels::lse_merge(out, lse, at::zeros({1, 2, 1, 4}), at::full({1, 1, 2}, -INFINITY));
  EXPECT_TRUE(at::isneginf(lse).all().item<bool>());
  EXPECT_FALSE(at::isnan(out).any().item<bool>());
  EXPECT_TRUE(out.eq(0).all().item<bool>());
}

TEST(SparseAttentionCpu, RejectsMismatchedShapes) {
  auto p = random_problem(1, 2, 1, 2, 2, 4, 8, at::kFloat, 0.5, 1);
  EXPECT_THROW(
      kernels::sparse_attention_forward(p.q.slice(1, 0, 6), p.k, p.v, p.blocks, p.index, 1.0),
      c10::Error);
  EXPECT_THROW(kernels::sparse_attention_forward(p.q, p.k.slice(2, 0, 1).repeat({1, 1, 3, 1}), p.v,
                                                 p.blocks, p.index, 1.0),
               c10::Error);
}

}  // namespace
}  // namespace sparsering

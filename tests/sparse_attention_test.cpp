// The CPU twin of the block-sparse attention kernels against dense fp64 attention with an explicit
// mask built independently from the index (random indices, GQA, empty rows, permuted layouts),
// with and without document masking.
#include "kernels/sparse_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

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
// and a few random columns outside them; some rows are left empty on purpose. The query and kv
// blocks are disjoint, or with `same_blocks` (a shard against itself) identical.
Problem random_problem(int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_blocks,
                       int64_t k_blocks, int block, int64_t dim, at::ScalarType type,
                       double keep_probability, uint64_t seed, bool same_blocks = false) {
  at::manual_seed(seed);
  Problem p;
  if (same_blocks) {
    const auto ids = at::randperm(q_blocks, at::kLong).to(at::kInt);
    p.blocks.q_block_ids = p.blocks.k_block_ids = ids;
    k_blocks = q_blocks;
  } else {
    const auto ids = at::randperm(q_blocks + k_blocks, at::kLong);
    p.blocks.q_block_ids = ids.slice(0, 0, q_blocks).to(at::kInt);
    p.blocks.k_block_ids = ids.slice(0, q_blocks).to(at::kInt);
  }
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

// The CPU twin's forward (out, lse) and backward (dq, dk, dv added into accumulators) against
// autograd through dense fp64 attention with p.mask.
void expect_matches_dense_reference(const Problem& p, double scale) {
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

class SparseAttentionCpu : public ::testing::TestWithParam<std::tuple<int64_t, double>> {};

TEST_P(SparseAttentionCpu, ForwardAndBackwardMatchDenseReference) {
  const auto [kv_heads, keep] = GetParam();
  const auto p = random_problem(2, 4, kv_heads, 3, 4, 4, 8, at::kFloat, keep, 42);
  expect_matches_dense_reference(p, 0.35);
}

INSTANTIATE_TEST_SUITE_P(GqaAndDensity, SparseAttentionCpu,
                         ::testing::Values(std::make_tuple(4, 0.5), std::make_tuple(2, 0.3),
                                           std::make_tuple(1, 1.0), std::make_tuple(2, 0.0)));

// Document masking: the problem's queries get the key starts of `starts_of_batch[b]` (document
// boundaries over the global sequence of all q and kv blocks), and the reference mask keeps only
// the pairs of one document.
void add_documents(Problem& p, const std::vector<std::vector<int64_t>>& starts_of_batch,
                   int block) {
  const int64_t batch = p.q.size(0);
  const int64_t length = (std::max(p.blocks.q_block_ids.max().item<int64_t>(),
                                   p.blocks.k_block_ids.max().item<int64_t>()) +
                          1) *
                         block;
  auto positions = [&](const at::Tensor& ids) {
    return (ids.to(at::kLong).unsqueeze(1) * block + at::arange(block, at::kLong)).reshape(-1);
  };
  const auto q_pos = positions(p.blocks.q_block_ids), k_pos = positions(p.blocks.k_block_ids);
  std::vector<at::Tensor> key_starts;
  for (int64_t b = 0; b < batch; ++b) {
    const auto& starts = starts_of_batch[b];
    key_starts.push_back(testing::document_key_starts(starts, length).index_select(0, q_pos));
    const auto same = testing::same_document_mask(starts, length)
                          .index_select(0, q_pos)
                          .index_select(1, k_pos);  // [q_tokens, k_tokens]
    p.mask[b] = p.mask[b].logical_and(same.unsqueeze(0));
  }
  p.blocks.q_key_starts = at::stack(key_starts).contiguous();
}

struct DocumentCase {
  const char* name;
  std::vector<int64_t> starts;  // document starts of batch entry 0; entry 1 adds one at 13
  double keep;                  // active block probability (1 = every causal block)
};

class DocumentMaskCpu : public ::testing::TestWithParam<DocumentCase> {};

// 7 global blocks of 4 tokens, permuted: 3 query blocks against 4 other kv blocks, or all 7
// against themselves. The twin with key starts equals dense attention masked by "causal and same
// document", outputs and gradients.
TEST_P(DocumentMaskCpu, ForwardAndBackwardMatchDenseReference) {
  const DocumentCase& c = GetParam();
  const int block = 4;
  std::vector<int64_t> second = c.starts;
  second.push_back(13);
  std::sort(second.begin(), second.end());
  second.erase(std::unique(second.begin(), second.end()), second.end());
  for (const bool same_blocks : {false, true}) {
    for (const int64_t kv_heads : {int64_t{4}, int64_t{2}}) {
      SCOPED_TRACE(std::string(same_blocks ? "self pair" : "disjoint pair") + ", kv heads " +
                   std::to_string(kv_heads));
      auto p = random_problem(2, 4, kv_heads, same_blocks ? 7 : 3, 4, block, 8, at::kFloat, c.keep,
                              17, same_blocks);
      add_documents(p, {c.starts, second}, block);
      expect_matches_dense_reference(p, 0.35);
      if (same_blocks && c.keep == 1.0) {
        // Queries whose only visible key is themselves: a document's first token (a one-token
        // document included) in a kept row.
        EXPECT_TRUE(p.mask.sum(-1).eq(1).any().item<bool>());
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, DocumentMaskCpu,
    ::testing::Values(DocumentCase{"one_document", {0}, 0.5},
                      DocumentCase{"many_short_documents", {0, 3, 6, 9, 12, 15, 18, 21, 24}, 0.5},
                      DocumentCase{"boundary_inside_a_block", {0, 6, 17}, 0.5},
                      DocumentCase{"boundary_inside_a_block_dense", {0, 6, 17}, 1.0},
                      DocumentCase{"single_token_document", {0, 9, 10, 20}, 1.0},
                      DocumentCase{"single_token_document_sparse", {0, 9, 10, 20}, 0.3}),
    [](const ::testing::TestParamInfo<DocumentCase>& info) { return info.param.name; });

TEST(DocumentMaskCpu, RejectsKeyStartsOfTheWrongShapeOrType) {
  auto p = random_problem(2, 2, 1, 2, 2, 4, 8, at::kFloat, 0.5, 1);
  auto expect_refused = [&](const at::Tensor& key_starts, const std::string& phrase) {
    kernels::ShardBlocks blocks = p.blocks;
    blocks.q_key_starts = key_starts;
    try {
      kernels::sparse_attention_forward(p.q, p.k, p.v, blocks, p.index, 1.0);
      ADD_FAILURE() << "expected an error mentioning " << phrase;
    } catch (const c10::Error& error) {
      EXPECT_NE(std::string(error.what()).find(phrase), std::string::npos) << error.what();
    }
  };
  expect_refused(at::zeros({2, 8}, at::kLong), "must be int32");
  expect_refused(at::zeros({1, 8}, at::kInt), "[batch, q_tokens] = [2, 8]");
  expect_refused(at::zeros({16}, at::kInt), "[batch, q_tokens] = [2, 8]");
}

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

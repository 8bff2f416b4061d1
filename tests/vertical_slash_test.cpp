// Vertical-slash patterns: selection, and the index of every (query shard, kv shard) pair under
// every layout against the pattern's global token mask written out from its definition, with and
// without the pruning that document masking allows.
#include "kernels/vertical_slash.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/sparse_attention_cpu.h"
#include "kernels/sparse_attention_params.h"
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

// Equal masses go to the lower position, and the columns' rows are num_columns + sink_tokens wide
// whatever the mass picks: here head 0's strongest column lies in the sink, so it ends with -1.
TEST(SelectPattern, TiesGoToTheLowerPositionAndRowsHaveAFixedWidth) {
  const int64_t length = 64;
  kernels::AttentionMass mass{at::zeros({2, length}), at::zeros({2, length})};
  mass.vertical[0][1] = 3.0;
  mass.vertical[0].slice(0, 40, 64).fill_(1.0);
  mass.vertical[1].slice(0, 10, 20).fill_(2.0);
  mass.slash[0].slice(0, 30, 64).fill_(1.0);
  const auto p = kernels::select_pattern(mass, /*num_columns=*/3, /*num_diagonals=*/2,
                                         /*sink_tokens=*/2, /*local_tokens=*/0, /*block_size=*/16);
  EXPECT_TRUE(
      p.columns.equal(at::tensor({0, 1, 40, 41, -1, 0, 1, 10, 11, 12}, at::kLong).view({2, 5})))
      << p.columns;
  // Head 0: diagonals 30 and 31 (offsets 1 and 2); head 1: every diagonal ties at 0, so 0 and 1
  // (offsets 0 and 1).
  EXPECT_TRUE(p.block_diagonals.equal(
      at::tensor({0, 1, 1, 0, 1, 1, 0, 0}, at::kInt).to(at::kBool).view({2, 4})))
      << p.block_diagonals;
  // Counts beyond the length are clamped; no top-k leaves only the sink.
  const auto all = kernels::select_pattern(mass, 100, 100, 100, 100, 16);
  EXPECT_TRUE(all.columns.equal(at::arange(length, at::kLong).expand({2, length})));
  EXPECT_TRUE(all.block_diagonals.all().item<bool>());
  const auto sink_only = kernels::select_pattern(mass, 0, 0, 2, 0, 16);
  EXPECT_TRUE(sink_only.columns.equal(at::tensor({0, 1, 0, 1}, at::kLong).view({2, 2})));
  EXPECT_FALSE(sink_only.block_diagonals.any().item<bool>());
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

// The ring's estimate on two shards of a permuted key order: each shard's row statistics, combined
// as in online softmax (global max, local sums rescaled to it and added), then each shard's mass
// from its own logits, added. Must equal the softmax over whole rows fed to attention_mass, also
// for a row that is -inf on one shard only and a row that is -inf everywhere (mass 0, no NaN).
TEST(AttentionMassFromLogits, ShardsCombinedLikeTheRingEqualTheWholeSequenceSoftmax) {
  at::manual_seed(17);
  const int64_t batch = 2, heads = 3, samples = 8, length = 96;
  const auto q_positions = at::arange(length - samples, length, at::kLong);
  auto logits = testing::estimation_logits(batch, heads, q_positions, length);
  const auto order = at::randperm(length, at::kLong);
  const std::vector<at::Tensor> shard_positions = {order.slice(0, 0, length / 2),
                                                   order.slice(0, length / 2)};
  // Row (0, 1, 2) has finite logits only on the second shard.
  logits[0][1][2].index_fill_(0, shard_positions[0], -std::numeric_limits<float>::infinity());

  std::vector<at::Tensor> shard_logits;
  std::vector<kernels::SoftmaxRowStats> shard_stats;
  for (const auto& positions : shard_positions) {
    shard_logits.push_back(logits.index_select(3, positions).contiguous());
    shard_stats.push_back(kernels::softmax_row_stats(shard_logits.back()));
    EXPECT_FALSE(at::isnan(shard_stats.back().sum).any().item<bool>());
  }
  EXPECT_TRUE(at::isneginf(shard_stats[0].max[0][1][2]).item<bool>());
  EXPECT_EQ(shard_stats[0].sum[0][1][2].item<float>(), 0.f);
  const auto row_max = at::maximum(shard_stats[0].max, shard_stats[1].max);
  const auto row_sum = kernels::rescale_row_sum(shard_stats[0], row_max) +
                       kernels::rescale_row_sum(shard_stats[1], row_max);
  EXPECT_TRUE(at::isneginf(row_max[batch - 1][heads - 1][0]).item<bool>());
  EXPECT_EQ(row_sum[batch - 1][heads - 1][0].item<float>(), 0.f);

  kernels::AttentionMass combined{at::zeros({heads, length}), at::zeros({heads, length})};
  for (size_t s = 0; s < shard_positions.size(); ++s) {
    const auto mass = kernels::attention_mass_from_logits(shard_logits[s], row_max, row_sum,
                                                          q_positions, shard_positions[s], length);
    combined.vertical += mass.vertical;
    combined.slash += mass.slash;
  }
  const auto reference = testing::reference_attention_mass(logits, q_positions);
  EXPECT_LT(testing::max_abs_diff(combined.vertical, reference.vertical), 1e-5);
  EXPECT_LT(testing::max_abs_diff(combined.slash, reference.slash), 1e-5);
  // Every row but the empty one is a distribution: batch x samples units of mass per head, one
  // less on the last head.
  auto units = at::full({heads}, static_cast<double>(batch * samples), at::kDouble);
  units[heads - 1] -= 1;
  EXPECT_TRUE(at::allclose(combined.vertical.sum(1).to(at::kDouble), units, 1e-5));
}

// The deterministic backward's transposed columns as they must be: row (b, kv head, key token)
// lists q_head * q_blocks + qb of every column row holding that key, in ascending row order.
// Returns the expected offsets and entries, from the column rows by plain loops.
std::pair<at::Tensor, at::Tensor> expected_transposed_columns(const kernels::SparseIndex& index,
                                                              int64_t batch, int64_t heads,
                                                              int64_t kv_heads, int64_t q_blocks,
                                                              int64_t k_tokens) {
  std::vector<std::vector<int>> rows(batch * kv_heads * k_tokens);
  for (int64_t row = 0; row < batch * heads * q_blocks; ++row) {
    const int64_t b = row / (heads * q_blocks), h = row / q_blocks % heads, qb = row % q_blocks;
    for (int c = index.column_row_offsets[row].item<int>();
         c < index.column_row_offsets[row + 1].item<int>(); ++c) {
      const int64_t key = index.column_indices[c].item<int>();
      rows[(b * kv_heads + h / (heads / kv_heads)) * k_tokens + key].push_back(
          static_cast<int>(h * q_blocks + qb));
    }
  }
  std::vector<int> offsets{0}, entries;
  for (const auto& row : rows) {
    entries.insert(entries.end(), row.begin(), row.end());
    offsets.push_back(static_cast<int>(entries.size()));
  }
  return {at::tensor(offsets, at::kInt), at::tensor(entries, at::kInt)};
}

// The column keys the deterministic backward's chunks hold, from the transposed column offsets:
// per (sequence, kv head) row, the tokens with entries, ascending, then -1 up to the capacity.
void expect_column_keys(const kernels::SparseIndex& index, int64_t kv_rows, int64_t k_tokens) {
  const auto keys = index.t_column_keys;
  ASSERT_EQ(keys.dim(), 2);
  ASSERT_EQ(keys.size(0), kv_rows);
  EXPECT_EQ(keys.scalar_type(), at::kInt);
  EXPECT_EQ(keys.size(1) % kernels::kColumnKeyChunk, 0);
  for (int64_t row = 0; row < kv_rows; ++row) {
    std::vector<int> expected;
    for (int64_t token = 0; token < k_tokens; ++token) {
      const int64_t t_row = row * k_tokens + token;
      if (index.t_column_row_offsets[t_row + 1].item<int>() >
          index.t_column_row_offsets[t_row].item<int>()) {
        expected.push_back(static_cast<int>(token));
      }
    }
    ASSERT_LE(static_cast<int64_t>(expected.size()), keys.size(1)) << "row " << row;
    expected.resize(keys.size(1), -1);
    EXPECT_TRUE(keys[row].equal(at::tensor(expected, at::kInt))) << "row " << row;
  }
}

// The (batch, head, query block, kv block) incidences of an index's CSR, and of its transposed
// CSR (rows (b, kv head, kv block), entries q_head * q_blocks + qb), as [B, H, QB, KB] bool.
at::Tensor block_incidence(const kernels::SparseIndex& index, int64_t batch, int64_t heads,
                           int64_t q_blocks, int64_t k_blocks) {
  auto incidence = at::zeros({batch * heads * q_blocks, k_blocks}, at::kBool);
  for (int64_t row = 0; row < batch * heads * q_blocks; ++row) {
    for (int e = index.block_row_offsets[row].item<int>();
         e < index.block_row_offsets[row + 1].item<int>(); ++e) {
      incidence[row][index.block_cols[e].item<int>()] = true;
    }
  }
  return incidence.view({batch, heads, q_blocks, k_blocks});
}

at::Tensor transposed_block_incidence(const kernels::SparseIndex& index, int64_t batch,
                                      int64_t heads, int64_t kv_heads, int64_t q_blocks,
                                      int64_t k_blocks) {
  auto incidence = at::zeros({batch, heads * q_blocks, k_blocks}, at::kBool);
  for (int64_t row = 0; row < batch * kv_heads * k_blocks; ++row) {
    const int64_t b = row / (kv_heads * k_blocks), kb = row % k_blocks;
    for (int e = index.t_block_row_offsets[row].item<int>();
         e < index.t_block_row_offsets[row + 1].item<int>(); ++e) {
      incidence[b][index.t_block_entries[e].item<int>()][kb] = true;
    }
  }
  return incidence.view({batch, heads, q_blocks, k_blocks});
}

// A sink of 3 tokens stays columns; a sink of 2 whole blocks (and a head whose top columns fill
// a block) turns into active blocks. Either way the index attends exactly the pattern's pairs.
class IndexUnderLayout : public ::testing::TestWithParam<std::tuple<config::LayoutKind, int64_t>> {
};

TEST_P(IndexUnderLayout, PairIndicesTileTheGlobalMask) {
  const int world = 3, block = 8;
  const int64_t blocks = 2 * world * 3, length = blocks * block, heads = 4, kv_heads = 2;
  const auto [layout_kind, sink] = GetParam();
  at::manual_seed(11);
  kernels::AttentionMass mass{at::rand({heads, length}), at::rand({heads, length})};
  mass.vertical[1].slice(0, 5 * block, 6 * block).add_(2.0);  // head 1: block 5 is all columns
  const auto pattern = kernels::select_pattern(mass, 10, 12, sink, 5, block);
  const auto global = testing::global_pattern_mask(pattern);
  // Global kv blocks made wholly of a head's columns: never left as columns.
  const auto columns_in_block = at::zeros({heads, blocks}, at::kLong);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t c = 0; c < pattern.columns.size(1); ++c) {
      const int64_t position = pattern.columns[h][c].item<int64_t>();
      if (position >= 0) columns_in_block[h][position / block] += 1;
    }
  }
  const auto column_block = columns_in_block == block;
  EXPECT_TRUE(column_block[1][5].item<bool>());
  EXPECT_EQ(column_block[0][0].item<bool>(), sink >= block);
  parallel::TokenLayout layout(layout_kind, blocks, block, world);
  for (int qr = 0; qr < world; ++qr) {
    for (int kr = 0; kr < world; ++kr) {
      const kernels::ShardBlocks shard{layout.blocks_of(qr), layout.blocks_of(kr), {}};
      const auto index = kernels::build_sparse_index(pattern, shard, /*batch=*/2, kv_heads,
                                                     kernels::Transpose::kBlocksAndColumns);
      const auto k_ids = layout.blocks_of(kr).to(at::kLong);
      const int64_t q_blocks = layout.blocks_per_rank();
      for (int64_t row = 0; row + 1 < index.column_row_offsets.numel(); ++row) {
        const int64_t h = (row / q_blocks) % heads;
        for (int c = index.column_row_offsets[row].item<int>();
             c < index.column_row_offsets[row + 1].item<int>(); ++c) {
          const int64_t global_block =
              k_ids[index.column_indices[c].item<int>() / block].item<int64_t>();
          EXPECT_FALSE(column_block[h][global_block].item<bool>()) << "head " << h;
        }
      }
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
      EXPECT_TRUE(
          block_incidence(index, 2, heads, layout.blocks_per_rank(), layout.blocks_per_rank())
              .equal(transposed_block_incidence(index, 2, heads, kv_heads, layout.blocks_per_rank(),
                                                layout.blocks_per_rank())));
      EXPECT_EQ(index.t_block_entries.numel(), index.block_cols.numel());
      EXPECT_EQ(index.t_column_entries.numel(), index.column_indices.numel());
      EXPECT_EQ(index.t_block_row_offsets[-1].item<int>(), index.block_cols.numel());
      EXPECT_EQ(index.t_column_row_offsets[-1].item<int>(), index.column_indices.numel());
      const auto [t_offsets, t_entries] = expected_transposed_columns(
          index, 2, heads, kv_heads, layout.blocks_per_rank(), layout.blocks_per_rank() * block);
      EXPECT_TRUE(index.t_column_row_offsets.equal(t_offsets));
      EXPECT_TRUE(index.t_column_entries.equal(t_entries));
      expect_column_keys(index, 2 * kv_heads, layout.blocks_per_rank() * block);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, IndexUnderLayout,
                         ::testing::Combine(::testing::Values(config::LayoutKind::kContiguous,
                                                              config::LayoutKind::kZigzag,
                                                              config::LayoutKind::kBalanced),
                                            ::testing::Values(int64_t{3}, int64_t{16})));

// Document masking prunes the index: under the document mask the pruned index attends exactly
// the pairs the unpruned one does (and the global pattern, restricted to one document, says), with
// fewer blocks and columns; the transposed index follows the pruned rows of every sequence.
TEST_P(IndexUnderLayout, DocumentKeyStartsPruneBlocksWithoutChangingVisiblePairs) {
  const int world = 2, block = 8;
  const int64_t blocks = 2 * world * 4, length = blocks * block, heads = 4, kv_heads = 2;
  at::manual_seed(29);
  kernels::AttentionMass mass{at::rand({heads, length}), at::rand({heads, length})};
  const auto [layout_kind, sink] = GetParam();
  const auto pattern = kernels::select_pattern(mass, 16, 24, sink, 9, block);
  // Sequence 0: documents with boundaries inside blocks; sequence 1: a different cut.
  const std::vector<std::vector<int64_t>> documents = {{0, 21, 60, 61, 130, 200}, {0, 40, 97, 150}};
  const auto global = testing::global_pattern_mask(pattern);
  parallel::TokenLayout layout(layout_kind, blocks, block, world);
  const int64_t local = layout.blocks_per_rank() * block, local_blocks = layout.blocks_per_rank();
  int64_t pruned_blocks = 0, all_blocks = 0, pruned_columns = 0, all_columns = 0;
  for (int qr = 0; qr < world; ++qr) {
    std::vector<at::Tensor> key_starts;
    for (const auto& starts : documents) {
      key_starts.push_back(
          testing::document_key_starts(starts, length).index_select(0, layout.positions_of(qr)));
    }
    for (int kr = 0; kr < world; ++kr) {
      SCOPED_TRACE("pair " + std::to_string(qr) + "," + std::to_string(kr));
      const kernels::ShardBlocks plain{layout.blocks_of(qr), layout.blocks_of(kr), {}};
      kernels::ShardBlocks masked = plain;
      masked.q_key_starts = at::stack(key_starts);
      const auto unpruned = kernels::build_sparse_index(pattern, plain, 2, kv_heads,
                                                        kernels::Transpose::kBlocksAndColumns);
      const auto pruned = kernels::build_sparse_index(pattern, masked, 2, kv_heads,
                                                      kernels::Transpose::kBlocksAndColumns);
      const auto visible = kernels::cpu::attention_mask(masked, pruned, 2, heads, local, local);
      EXPECT_TRUE(
          visible.equal(kernels::cpu::attention_mask(masked, unpruned, 2, heads, local, local)));
      for (int64_t b = 0; b < 2; ++b) {
        const auto expected =
            global.logical_and(testing::same_document_mask(documents[b], length).unsqueeze(0))
                .index_select(1, layout.positions_of(qr))
                .index_select(2, layout.positions_of(kr));
        EXPECT_TRUE(visible[b].equal(expected)) << "sequence " << b;
      }
      // Pruning only removes: every kept block was in the unpruned row.
      const auto kept = block_incidence(pruned, 2, heads, local_blocks, local_blocks);
      EXPECT_TRUE(
          kept.logical_and(
                  block_incidence(unpruned, 2, heads, local_blocks, local_blocks).logical_not())
              .any()
              .logical_not()
              .item<bool>());
      EXPECT_TRUE(kept.equal(
          transposed_block_incidence(pruned, 2, heads, kv_heads, local_blocks, local_blocks)));
      EXPECT_EQ(pruned.t_column_entries.numel(), pruned.column_indices.numel());
      EXPECT_EQ(pruned.t_column_row_offsets[-1].item<int>(), pruned.column_indices.numel());
      expect_column_keys(pruned, 2 * kv_heads, local);
      pruned_blocks += pruned.num_blocks();
      all_blocks += unpruned.num_blocks();
      pruned_columns += pruned.num_columns();
      all_columns += unpruned.num_columns();
    }
  }
  EXPECT_LT(pruned_blocks, all_blocks);
  EXPECT_LT(pruned_columns, all_columns);
}

TEST(DensePattern, IndexesEveryCausalBlock) {
  const int block = 4;
  const auto pattern = kernels::dense_pattern(2, 32, block, at::kCPU);
  const auto ids = at::arange(8, at::kInt);
  const auto index =
      kernels::build_sparse_index(pattern, {ids, ids, {}}, 1, 1, kernels::Transpose::kNone);
  EXPECT_EQ(index.num_blocks(), 2 * 8 * 9 / 2);
  EXPECT_EQ(index.num_columns(), 0);
  // With every transposed part: kv block kb is read by query blocks kb..7 of both heads.
  const auto full = kernels::build_sparse_index(pattern, {ids, ids, {}}, 2, 1,
                                                kernels::Transpose::kBlocksAndColumns);
  EXPECT_EQ(full.num_blocks(), 2 * 2 * 8 * 9 / 2);
  EXPECT_EQ(full.t_block_entries.numel(), full.num_blocks());
  EXPECT_EQ(full.t_block_row_offsets[1].item<int>(), 2 * 8);
  EXPECT_EQ(full.t_column_row_offsets.numel(), 2 * 8 * block + 1);
  EXPECT_EQ(full.t_column_entries.numel(), 0);
  EXPECT_EQ(full.t_column_keys.numel(), 0);  // no columns: the column pass launches nothing
}

// Row offsets carry the entry count summed in int64; a count past int32 is refused by name
// rather than wrapped into negative offsets.
TEST(SparseIndexSize, EntriesBeyondInt32AreRefused) {
  at::Tensor total;
  const auto offsets = kernels::row_offsets_of(at::tensor({3, 0, 5}, at::kInt), &total);
  EXPECT_TRUE(offsets.equal(at::tensor({0, 3, 3, 8}, at::kInt)));
  EXPECT_EQ(total.item<int64_t>(), 8);
  EXPECT_NO_THROW(kernels::check_index_entries(std::numeric_limits<int32_t>::max(), "block"));
  try {
    kernels::check_index_entries(int64_t{1} << 31, "column");
    ADD_FAILURE() << "2^31 column entries were accepted";
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    EXPECT_NE(message.find("2147483648 column entries"), std::string::npos) << message;
    EXPECT_NE(message.find("parallel.context_parallel_size"), std::string::npos) << message;
  }
}

// The fused estimation API (sampled_row_stats, sampled_attention_mass) as the ring drives it, on
// two shards of a balanced-style layout: per-shard statistics combined as in online softmax, then
// the shards' masses added, equal the whole sequence's softmax fed to attention_mass.
TEST(SampledEstimation, ShardsCombinedLikeTheRingEqualTheWholeSequence) {
  at::manual_seed(23);
  const int64_t batch = 2, heads = 4, kv_heads = 2, samples = 8, length = 128, block = 16;
  const auto q = at::randn({batch, samples, heads, 8});
  const auto k = at::randn({batch, length, kv_heads, 8});
  const auto blocks = at::randperm(length / block, at::kLong);
  std::vector<at::Tensor> shard_positions;
  for (int s = 0; s < 2; ++s) {
    shard_positions.push_back(blocks.slice(0, s * 4, s * 4 + 4)
                                  .mul(block)
                                  .unsqueeze(1)
                                  .add(at::arange(block, at::kLong))
                                  .reshape(-1));
  }
  std::vector<kernels::SampledQueries> shards;
  std::vector<kernels::SoftmaxRowStats> stats;
  for (const auto& positions : shard_positions) {
    shards.push_back(kernels::make_sampled_queries(q, length - samples,
                                                   k.index_select(1, positions), positions, 0.3));
    stats.push_back(kernels::sampled_row_stats(shards.back()));
  }
  const auto row_max = at::maximum(stats[0].max, stats[1].max);
  const auto row_sum =
      kernels::rescale_row_sum(stats[0], row_max) + kernels::rescale_row_sum(stats[1], row_max);
  kernels::AttentionMass combined{at::zeros({heads, length}), at::zeros({heads, length})};
  for (const auto& shard : shards) {
    const auto mass = kernels::sampled_attention_mass(shard, row_max, row_sum, length);
    combined.vertical += mass.vertical;
    combined.slash += mass.slash;
  }
  const auto positions = at::arange(length, at::kLong);
  const auto q_positions = positions.slice(0, length - samples);
  const auto reference = kernels::attention_mass(
      at::softmax(kernels::sample_logits(q, q_positions, k, positions, 0.3), -1), q_positions,
      positions, length);
  EXPECT_LT(testing::max_abs_diff(combined.vertical, reference.vertical), 1e-5);
  EXPECT_LT(testing::max_abs_diff(combined.slash, reference.slash), 1e-5);
  EXPECT_GT(reference.slash.sum().item<double>(), 1.0);
  // Positions: int64 [k_tokens], unique, >= 0, within the sequence.
  EXPECT_THROW(kernels::make_sampled_queries(q, 0, k, positions.view({1, -1}), 0.3), c10::Error);
  EXPECT_THROW(kernels::make_sampled_queries(q, 0, k, positions.clamp_max(100), 0.3), c10::Error);
  EXPECT_THROW(kernels::make_sampled_queries(q, 0, k, positions.sub(1), 0.3), c10::Error);
  EXPECT_THROW(kernels::sampled_attention_mass(shards[0], row_max, row_sum, 100), c10::Error);
}

}  // namespace
}  // namespace sparsering

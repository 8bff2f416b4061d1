// Pattern estimation on the GPU against the same code on the CPU in fp32 on the same rounded
// inputs: bf16 logits into fp32 on tensor cores with the scatter-added attention mass, and the
// fused estimation kernels against their CPU twins. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cmath>

#include "kernels/vertical_slash.h"
#include "tests/attention_reference.h"

namespace sparsering {
namespace {

TEST(VerticalSlashGpu, EstimationMatchesCpu) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const int64_t length = 4096, samples = 64, heads = 8, kv_heads = 2, dim = 128;
  at::manual_seed(9);
  const auto q = at::randn({1, samples, heads, dim}).to(at::kBFloat16);
  const auto k = at::randn({1, length, kv_heads, dim}).to(at::kBFloat16);
  // Keys in a shuffled block order, as a balanced-layout shard holds them; the sampled queries
  // are the last positions, so the keys after them are masked.
  const auto positions = at::randperm(length / 64, at::kLong)
                             .mul(64)
                             .unsqueeze(1)
                             .add(at::arange(64, at::kLong))
                             .reshape(-1);
  const auto q_positions = at::arange(length - samples, length, at::kLong);
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));

  const auto cpu_logits = kernels::sample_logits(q, q_positions, k, positions, scale);
  auto gpu_logits =
      kernels::sample_logits(q.cuda(), q_positions.cuda(), k.cuda(), positions.cuda(), scale);
  ASSERT_EQ(gpu_logits.scalar_type(), at::kFloat);
  const auto finite = at::isfinite(cpu_logits);
  EXPECT_TRUE(at::equal(finite, at::isfinite(gpu_logits).cpu())) << "causal mask differs";
  EXPECT_LT(testing::max_abs_diff(gpu_logits.cpu().masked_fill(finite.logical_not(), 0),
                                  cpu_logits.masked_fill(finite.logical_not(), 0)),
            1e-3);

  const auto cpu_mass =
      kernels::attention_mass(at::softmax(cpu_logits, -1), q_positions, positions, length);
  const auto gpu_mass = kernels::attention_mass(at::softmax(gpu_logits, -1), q_positions.cuda(),
                                                positions.cuda(), length);
  EXPECT_FALSE(at::isnan(gpu_mass.vertical).any().item<bool>() ||
               at::isnan(gpu_mass.slash).any().item<bool>());
  EXPECT_LT(testing::max_abs_diff(gpu_mass.vertical, cpu_mass.vertical), 1e-4);
  EXPECT_LT(testing::max_abs_diff(gpu_mass.slash, cpu_mass.slash), 1e-4);
  // Each sampled query's probabilities sum to one over the sequence.
  EXPECT_NEAR(gpu_mass.vertical.sum().item<double>(), heads * samples, 1e-2);
}

// The fused estimation kernels (softmax row statistics, attention mass from the logits) against
// their CPU twins on one shard of a longer sequence, its keys in a shuffled order. The row
// statistics of the whole sequence feed both; the shard holds a row that is -inf on all its keys
// and one that is -inf on every key of the sequence.
struct MassCase {
  int64_t batch;
  int64_t k_tokens;     // not a multiple of 4: the row statistics' scalar path
  bool shuffle_tokens;  // keys shuffled token by token, not in whole 64-token blocks
};

class AttentionMassGpu : public ::testing::TestWithParam<MassCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  }
};

// Within fp32 rounding: max |got - expected| <= 1e-5 x max |expected| (and no NaN).
void expect_close(const at::Tensor& got, const at::Tensor& expected, const char* what) {
  const double tolerance = 1e-5 * std::max(1.0, expected.abs().max().item<double>());
  EXPECT_LT(testing::max_abs_diff(got, expected), tolerance) << what;
}

// k_tokens global positions of a shard of `length` tokens, in a shuffled order.
at::Tensor shard_positions(int64_t length, int64_t k_tokens, bool shuffle_tokens) {
  if (shuffle_tokens) return at::randperm(length, at::kLong).slice(0, 0, k_tokens);
  const auto blocks = at::randperm(length / 64, at::kLong).mul(64);
  return blocks.unsqueeze(1).add(at::arange(64, at::kLong)).reshape(-1).slice(0, 0, k_tokens);
}

TEST_P(AttentionMassGpu, MatchesCpuTwin) {
  const MassCase c = GetParam();
  const int64_t heads = 4, samples = 64, length = 8192;
  at::manual_seed(31);
  const auto q_positions = at::arange(length - samples, length, at::kLong);
  auto sequence_logits = testing::estimation_logits(c.batch, heads, q_positions, length);
  const auto k_positions = shard_positions(length, c.k_tokens, c.shuffle_tokens);
  // Row (0, 1, 3) has finite logits only outside this shard.
  sequence_logits[0][1][3].index_fill_(0, k_positions, -INFINITY);
  const auto logits = sequence_logits.index_select(3, k_positions).contiguous();
  const auto logits_gpu = logits.cuda();

  const auto cpu_stats = kernels::softmax_row_stats(logits);
  testing::poison_cuda_float_outputs(cpu_stats.max.sizes());
  const auto gpu_stats = kernels::softmax_row_stats(logits_gpu);
  EXPECT_TRUE(at::equal(gpu_stats.max.cpu(), cpu_stats.max)) << "row max";
  expect_close(gpu_stats.sum, cpu_stats.sum, "row sum");
  EXPECT_TRUE(at::isneginf(gpu_stats.max[0][1][3]).item<bool>());
  EXPECT_EQ(gpu_stats.sum[0][1][3].item<float>(), 0.f);

  const auto global = kernels::softmax_row_stats(sequence_logits);
  const auto cpu_mass = kernels::attention_mass_from_logits(logits, global.max, global.sum,
                                                            q_positions, k_positions, length);
  testing::poison_cuda_float_outputs({heads, length});
  const auto gpu_mass =
      kernels::attention_mass_from_logits(logits_gpu, global.max.cuda(), global.sum.cuda(),
                                          q_positions.cuda(), k_positions.cuda(), length);
  expect_close(gpu_mass.vertical, cpu_mass.vertical, "vertical");
  expect_close(gpu_mass.slash, cpu_mass.slash, "slash");
  // Guards against a vacuous comparison: the shard carries mass in both parts.
  EXPECT_GT(cpu_mass.vertical.sum().item<double>(), 1.0);
  EXPECT_GT(cpu_mass.slash.sum().item<double>(), 1.0);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionMassGpu,
                         ::testing::Values(MassCase{1, 3072, false}, MassCase{2, 3072, false},
                                           MassCase{2, 3001, false}, MassCase{1, 3072, true}));

// The one-launch selection (kernels/cuda/pattern_select.cu) against its CPU twin on the same
// mass: exactly the same columns (slots poisoned beforehand) and block offsets. Masses are
// quantised to 64 levels so that many entries tie at the top-k threshold (ties go to the lower
// position on both), and -0, +0 and +inf appear.
struct SelectCase {
  int64_t heads, length;
  int block;
  int64_t columns, diagonals, sink, local;
};

class SelectPatternGpu : public ::testing::TestWithParam<SelectCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  }
};

TEST_P(SelectPatternGpu, MatchesCpuTwin) {
  const SelectCase c = GetParam();
  at::manual_seed(static_cast<uint64_t>(c.length + c.heads));
  kernels::AttentionMass mass{at::randint(64, {c.heads, c.length}).to(at::kFloat).div_(64),
                              at::randint(64, {c.heads, c.length}).to(at::kFloat).div_(64)};
  mass.vertical[0][c.length / 3] = INFINITY;
  mass.vertical[0][c.length / 2] = -0.f;
  mass.slash[c.heads - 1].slice(0, 0, c.length / 2).zero_();
  const auto expected =
      kernels::select_pattern(mass, c.columns, c.diagonals, c.sink, c.local, c.block);
  const kernels::AttentionMass mass_gpu{mass.vertical.cuda(), mass.slash.cuda()};
  {  // Poison the block the op will be handed for its columns (its masses are already there).
    const auto columns = at::full(expected.columns.sizes(), 12345,
                                  at::TensorOptions().device(at::kCUDA).dtype(at::kLong));
  }
  const auto got =
      kernels::select_pattern(mass_gpu, c.columns, c.diagonals, c.sink, c.local, c.block);
  ASSERT_EQ(got.columns.sizes(), expected.columns.sizes());
  EXPECT_TRUE(at::equal(got.columns.cpu(), expected.columns)) << "columns";
  EXPECT_TRUE(at::equal(got.block_diagonals.cpu(), expected.block_diagonals)) << "block offsets";
  // The width is fixed by the counts; every head gets at least its top k (guards against a
  // vacuous comparison), and a diagonal budget marks block offsets.
  const auto clamp = [&c](int64_t count) { return std::min(count, c.length); };
  EXPECT_EQ(expected.columns.size(1), std::min(c.length, clamp(c.columns) + clamp(c.sink)));
  if (expected.columns.size(1) > 0) {
    EXPECT_GE(expected.columns.ge(0).sum(1).min().item<int64_t>(),
              std::max(clamp(c.columns), clamp(c.sink)));
  }
  EXPECT_EQ(expected.block_diagonals.any().item<bool>(), c.diagonals + c.local > 0);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SelectPatternGpu,
    ::testing::Values(SelectCase{3, 1000, 64, 37, 11, 5, 64},          // length not a tile
                      SelectCase{4, 8192, 128, 820, 16, 64, 1024},     // quality-extension budgets
                      SelectCase{32, 131072, 128, 1024, 64, 64, 128},  // 128K, 32 heads
                      SelectCase{2, 4096, 64, 0, 0, 0, 0},             // nothing
                      SelectCase{2, 4096, 64, 5000, 4096, 4096, 9999}));  // everything

}  // namespace
}  // namespace sparsering

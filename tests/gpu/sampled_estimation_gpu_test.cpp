// The fused estimation kernels (kernels/cuda/sampled_attention_mass.cu: sampled_row_stats and
// sampled_attention_mass, the logits never stored) against their CPU twin, the composition of
// sample_logits with softmax_row_stats / attention_mass_from_logits in fp32 on the same rounded
// inputs. One shard of a longer sequence, its blocks in a shuffled order; the sequence's row
// statistics feed the mass. Outputs are poisoned with NaN first. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/vertical_slash.h"
#include "tests/attention_reference.h"

namespace sparsering {
namespace {

struct SampledCase {
  int64_t batch, heads, kv_heads, dim, queries;
  int block;             // the layout's block size: key runs of 64 or 128 positions
  int64_t query_offset;  // sampled queries end this many positions before the sequence's end
  at::ScalarType type;
};

class SampledEstimationGpu : public ::testing::TestWithParam<SampledCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  }
};

// max |got - expected| <= tolerance x max |expected|, and no NaN.
void expect_close(const at::Tensor& got, const at::Tensor& expected, double tolerance,
                  const char* what) {
  EXPECT_FALSE(at::isnan(got).any().item<bool>()) << what;
  const double scale = std::max(1e-6, expected.abs().max().item<double>());
  EXPECT_LT(testing::max_abs_diff(got, expected), tolerance * scale) << what;
}

TEST_P(SampledEstimationGpu, MatchesCpuTwin) {
  const SampledCase c = GetParam();
  const int64_t length = 8192;
  at::manual_seed(41);
  // 9/16 of the blocks, shuffled, as a layout's shard holds them: 4608 keys, 72 tiles of 64, so
  // the last CTA's chunk has 8 of its 16 tiles.
  const auto positions = at::randperm(length / c.block, at::kLong)
                             .slice(0, 0, length / c.block * 9 / 16)
                             .mul(c.block)
                             .unsqueeze(1)
                             .add(at::arange(c.block, at::kLong))
                             .reshape(-1);
  const int64_t first = length - c.query_offset - c.queries;
  // Logits of spread about 2 so that the masses are far from uniform.
  const auto q = at::randn({c.batch, c.queries, c.heads, c.dim}).mul(1.5).to(c.type);
  const auto k_sequence = at::randn({c.batch, length, c.kv_heads, c.dim}).mul(1.5).to(c.type);
  const auto k = k_sequence.index_select(1, positions).contiguous();
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dim));

  const auto cpu = kernels::make_sampled_queries(q, first, k, positions, scale);
  const auto gpu = kernels::make_sampled_queries(q.cuda(), first, k.cuda(), positions, scale);
  const auto cpu_stats = kernels::sampled_row_stats(cpu);
  testing::poison_cuda_float_outputs(cpu_stats.max.sizes());
  const auto gpu_stats = kernels::sampled_row_stats(gpu);
  // Logits differ by the order of the fp32 dot products only.
  expect_close(gpu_stats.max.cpu(), cpu_stats.max, 1e-5, "row max");
  expect_close(gpu_stats.sum.cpu(), cpu_stats.sum, 1e-4, "row sum");

  // The statistics of the whole sequence (every key), as the ring all-reduces them.
  const auto whole = kernels::sampled_row_stats(
      kernels::make_sampled_queries(q, first, k_sequence, at::arange(length, at::kLong), scale));
  const auto cpu_mass = kernels::sampled_attention_mass(cpu, whole.max, whole.sum, length);
  testing::poison_cuda_float_outputs({c.heads, length});
  const auto gpu_mass =
      kernels::sampled_attention_mass(gpu, whole.max.cuda(), whole.sum.cuda(), length);
  expect_close(gpu_mass.vertical.cpu(), cpu_mass.vertical, 1e-4, "vertical");
  expect_close(gpu_mass.slash.cpu(), cpu_mass.slash, 1e-4, "slash");
  // Positions of other shards carry no vertical mass; the shard's mass is the same in both parts.
  auto elsewhere = at::ones({length}, at::kBool);
  elsewhere.index_fill_(0, positions, false);
  EXPECT_TRUE(
      gpu_mass.vertical.cpu().index({at::indexing::Slice(), elsewhere}).eq(0).all().item<bool>());
  EXPECT_NEAR(gpu_mass.vertical.sum().item<double>(), gpu_mass.slash.sum().item<double>(),
              1e-3 * gpu_mass.vertical.sum().item<double>());
  // Guards against a vacuous comparison: the shard holds a good part of every row's mass.
  EXPECT_GT(cpu_mass.vertical.sum().item<double>(), 0.2 * c.batch * c.queries * c.heads);
  // No atomics: a rerun is bitwise equal.
  const auto again =
      kernels::sampled_attention_mass(gpu, whole.max.cuda(), whole.sum.cuda(), length);
  EXPECT_TRUE(again.vertical.equal(gpu_mass.vertical) && again.slash.equal(gpu_mass.slash));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SampledEstimationGpu,
    ::testing::Values(SampledCase{1, 8, 2, 128, 64, 64, 0, at::kBFloat16},
                      SampledCase{2, 4, 4, 64, 64, 128, 0, at::kHalf},
                      // two row groups, the second one padded; queries ending before the end
                      SampledCase{2, 4, 1, 128, 100, 128, 300, at::kBFloat16},
                      SampledCase{1, 6, 3, 64, 128, 64, 0, at::kBFloat16},
                      SampledCase{1, 2, 2, 128, 1, 64, 17, at::kHalf}));

// A shard whose keys all follow the sampled queries: every row (-inf, 0) and no mass, no NaN.
TEST(SampledEstimationGpuEdges, ShardAfterTheQueriesHasNoMass) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const int64_t length = 1024;
  const auto q = at::randn({1, 64, 2, 64}).to(at::kBFloat16).cuda();
  const auto k = at::randn({1, 512, 2, 64}).to(at::kBFloat16).cuda();
  const auto sampled =
      kernels::make_sampled_queries(q, 0, k, at::arange(512, length, at::kLong), 0.125);
  const auto stats = kernels::sampled_row_stats(sampled);
  EXPECT_TRUE(at::isneginf(stats.max).all().item<bool>());
  EXPECT_TRUE(stats.sum.eq(0).all().item<bool>());
  const auto mass = kernels::sampled_attention_mass(sampled, stats.max, stats.sum, length);
  EXPECT_TRUE(mass.vertical.eq(0).all().item<bool>() && mass.slash.eq(0).all().item<bool>());
}

// Runs `call` and expects a c10::Error whose message contains `needle`.
template <typename Call>
void expect_error(Call call, const std::string& needle) {
  try {
    call();
    ADD_FAILURE() << "no error; expected one containing \"" << needle << "\"";
  } catch (const c10::Error& error) {
    EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
  }
}

// What the kernels cannot take is refused with an error naming the requirement.
TEST(SampledEstimationGpuEdges, RefusesWhatTheKernelsCannotTake) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const auto q = at::randn({1, 64, 2, 64}, bf16);
  const auto k = at::randn({1, 128, 2, 64}, bf16);
  const auto positions = at::arange(128, at::kLong);
  // Keys in runs of 32: a layout with 32-token blocks.
  const auto runs_of_32 =
      at::cat({positions.slice(0, 32, 64), positions.slice(0, 0, 32), positions.slice(0, 64)});
  expect_error([&] { kernels::make_sampled_queries(q, 64, k, runs_of_32, 0.1); }, "runs of 64");
  expect_error(
      [&] {
        kernels::make_sampled_queries(q, 64, k.slice(1, 0, 96), positions.slice(0, 0, 96), 0.1);
      },
      "runs of 64");
  expect_error([&] { kernels::make_sampled_queries(q, 64, k, positions.cuda(), 0.1); },
               "on the CPU");
  expect_error([&] { kernels::make_sampled_queries(q, 64, k, positions.sub(64), 0.1); },
               "unique positions >= 0");
  expect_error(
      [&] {
        kernels::make_sampled_queries(q.to(at::kFloat), 64, k.to(at::kFloat), positions, 0.1);
      },
      "bf16 or fp16");
  expect_error(
      [&] {
        kernels::make_sampled_queries(at::randn({1, 129, 2, 64}, bf16), 0,
                                      at::randn({1, 192, 2, 64}, bf16), at::arange(192, at::kLong),
                                      0.1);
      },
      "at most 128 sampled queries");
  const auto sampled = kernels::make_sampled_queries(q, 0, k, positions, 0.1);
  const auto stats = kernels::sampled_row_stats(sampled);
  expect_error([&] { kernels::sampled_attention_mass(sampled, stats.max, stats.sum, 130); },
               "multiple of 64");
  expect_error([&] { kernels::sampled_attention_mass(sampled, stats.max, stats.sum, 64); },
               "must hold the shard's key positions");
}

}  // namespace
}  // namespace sparsering

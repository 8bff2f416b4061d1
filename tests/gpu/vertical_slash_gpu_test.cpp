// Pattern estimation on the GPU (bf16 logits into fp32 on tensor cores, scatter-added attention
// mass) against the same ATen code on the CPU in fp32 on the same rounded inputs. Skipped
// without a GPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>

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

}  // namespace
}  // namespace sparsering

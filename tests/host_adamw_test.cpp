// host_adamw (the offloaded optimizer's fused host pass) against its reference twin: the SR-STE
// term added to the gradient, clipping's factor applied, then flat_adamw_step (torch AdamW's
// operations one at a time). fp32, bf16 and fp16 gradients; outputs poisoned with NaN first.
#include "trainer/state/host_adamw.h"

#include <gtest/gtest.h>

#include "configs/config.h"
#include "trainer/state/flat_adamw.h"

namespace sparsering::trainer {
namespace {

struct Case {
  at::ScalarType grad_dtype;
  bool sr_ste;
  double grad_scale;
};

class HostAdamWTest : public ::testing::TestWithParam<Case> {};

TEST_P(HostAdamWTest, MatchesTheReferenceStep) {
  const Case c = GetParam();
  at::manual_seed(11);
  const int64_t n = 100003;  // not a multiple of any grain or vector width
  config::OptimizerConfig optimizer{};
  optimizer.weight_decay = 0.1;
  optimizer.beta1 = 0.9;
  optimizer.beta2 = 0.95;
  optimizer.eps = 1e-8;
  const double lr = 3e-3, lambda = 0.02;
  auto master = at::randn({n});
  const auto initial = master.clone();
  auto exp_avg = at::randn({n}) * 0.1;
  auto exp_avg_sq = at::rand({n}) * 0.01;
  const auto grad = at::randn({n}).to(c.grad_dtype);
  const auto keep = at::rand({n}).gt(0.5).to(at::kByte);

  // The reference: the same steps with torch operations.
  auto ref_master = master.clone(), ref_m = exp_avg.clone(), ref_v = exp_avg_sq.clone();
  auto ref_grad = grad.to(at::kFloat);
  if (c.sr_ste) ref_grad.add_(ref_master.masked_fill(keep.to(at::kBool), 0), lambda);
  if (c.grad_scale != 1) ref_grad.mul_(c.grad_scale);
  flat_adamw_step(ref_master, ref_grad, ref_m, ref_v, lr, optimizer, /*step=*/3);

  HostAdamWStep step;
  step.lr = lr;
  step.step = 3;
  step.grad_scale = c.grad_scale;
  step.sr_ste_lambda = c.sr_ste ? lambda : 0;
  step.optimizer = optimizer;
  auto weights = at::full({n}, std::numeric_limits<float>::quiet_NaN(), at::kBFloat16);
  host_adamw(master, exp_avg, exp_avg_sq, grad, c.sr_ste ? keep : at::Tensor(), weights, step);

  // Equal to an fp32 rounding: the fused loop may contract a multiply and an add.
  EXPECT_TRUE(at::allclose(master, ref_master, 1e-6, 1e-7));
  EXPECT_TRUE(at::allclose(exp_avg, ref_m, 1e-6, 1e-7))
      << (exp_avg - ref_m).abs().max().item<double>();
  EXPECT_TRUE(at::allclose(exp_avg_sq, ref_v, 1e-6, 1e-10));
  EXPECT_FALSE(at::isnan(weights).any().item<bool>());
  EXPECT_TRUE(weights.equal(master.to(at::kBFloat16)));
  // The step moved the weights (all but those whose update is below half an fp32 ulp).
  EXPECT_GT(master.ne(initial).to(at::kFloat).mean().item<double>(), 0.99);
}

INSTANTIATE_TEST_SUITE_P(Gradients, HostAdamWTest,
                         ::testing::Values(Case{at::kFloat, false, 1.0},
                                           Case{at::kBFloat16, true, 1.0},
                                           Case{at::kHalf, false, 0.37},
                                           Case{at::kBFloat16, true, 0.37}));

TEST(HostStepPipelineTest, StepsCpuSlicesInChunks) {
  at::manual_seed(5);
  const int64_t n = 1000;
  config::OptimizerConfig optimizer{};
  optimizer.beta1 = 0.9;
  optimizer.beta2 = 0.999;
  optimizer.eps = 1e-8;
  auto master = at::randn({n}), m = at::zeros({n}), v = at::zeros({n});
  auto ref_master = master.clone(), ref_m = m.clone(), ref_v = v.clone();
  const auto grad = at::randn({n});
  HostAdamWStep step;
  step.lr = 1e-2;
  step.optimizer = optimizer;
  auto weights = at::full({n}, std::numeric_limits<float>::quiet_NaN());
  HostStepPipeline(/*chunk=*/64).run(grad, master, m, v, at::Tensor(), weights, step);
  flat_adamw_step(ref_master, grad, ref_m, ref_v, step.lr, optimizer, 1);
  EXPECT_TRUE(at::allclose(master, ref_master, 1e-6, 1e-7));
  EXPECT_TRUE(weights.equal(master));
}

TEST(HostAdamWTest, RoundsWeightsToBf16LikeTorch) {
  // A zero gradient at lr 0 leaves each master as it is, so the bf16 weights must be exactly
  // torch's rounding of these values: ties to even both ways, infinities, signed zero, the largest
  // floats (which round to infinity) and subnormals. NaN stays NaN (torch's vectorised and scalar
  // conversions give different NaN bit patterns, so only NaN-ness is compared).
  const std::vector<uint32_t> bit_patterns = {0x3F808000u, 0x3F818000u, 0xBF808000u, 0x3F80C000u,
                                              0x3F807FFFu, 0x7FC00000u, 0xFFC12345u, 0x7F800000u,
                                              0xFF800000u, 0x00000000u, 0x80000000u, 0x7F7FFFFFu,
                                              0xFF7FFFFFu, 0x00000001u, 0x00408000u, 0x12345678u};
  auto bits = at::tensor(std::vector<int64_t>(bit_patterns.begin(), bit_patterns.end()));
  auto master = bits.to(at::kInt).view(at::kFloat).contiguous();
  const auto expected = master.to(at::kBFloat16);
  const int64_t n = master.numel();
  auto m = at::zeros({n}), v = at::zeros({n});
  HostAdamWStep step;
  step.optimizer.beta1 = 0.9;
  step.optimizer.beta2 = 0.999;
  step.optimizer.eps = 1e-8;
  auto weights = at::full({n}, 1.0, at::kBFloat16);
  host_adamw(master, m, v, at::zeros({n}, at::kBFloat16), at::Tensor(), weights, step);
  const auto nan = at::isnan(expected);
  EXPECT_TRUE(at::isnan(weights).equal(nan));
  EXPECT_TRUE(weights.view(at::kShort)
                  .masked_fill(nan, 0)
                  .equal(expected.view(at::kShort).masked_fill(nan, 0)))
      << weights.view(at::kShort) << expected.view(at::kShort);
}

}  // namespace
}  // namespace sparsering::trainer

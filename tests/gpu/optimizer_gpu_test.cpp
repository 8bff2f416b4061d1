// The AdamW step of CUDA masters (ATen's multi-tensor kernel, with multi-tensor norm, clip and
// write-back) against torch::optim::AdamW on the CPU from the same weights and gradients: masters,
// moments, step counts and the bf16 weights after steps with clipping and with a parameter that
// has no gradient in one step (its step count falls behind). Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <vector>

#include "tests/attention_reference.h"
#include "trainer/state/optimizer.h"

namespace sparsering {
namespace {

TEST(MasterWeightOptimizerGpu, MultiTensorStepMatchesTorchAdamW) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  at::manual_seed(11);
  const std::vector<std::vector<int64_t>> shapes{{64, 48}, {48}, {1000, 3}, {7}};
  std::vector<at::Tensor> cpu_params, gpu_params;
  for (const auto& shape : shapes) {
    const auto value = at::randn(shape).to(at::kBFloat16);
    cpu_params.push_back(value.clone().requires_grad_(true));
    gpu_params.push_back(value.cuda().requires_grad_(true));
  }
  config::OptimizerConfig config{};
  config.lr = 1e-2;
  config.beta1 = 0.9;
  config.beta2 = 0.95;
  config.eps = 1e-8;
  config.weight_decay = 0.1;
  trainer::MasterWeightOptimizer cpu(cpu_params, config), gpu(gpu_params, config);
  for (int step = 1; step <= 3; ++step) {
    cpu.zero_grad();
    gpu.zero_grad();
    for (size_t i = 0; i < shapes.size(); ++i) {
      if (step == 2 && i == 1) continue;  // no gradient: AdamW leaves it (and its step) alone
      const auto grad = at::randn(shapes[i]).mul_(step == 1 ? 10.0 : 0.1).to(at::kBFloat16);
      cpu_params[i].mutable_grad() = grad.clone();
      gpu_params[i].mutable_grad() = grad.cuda();
    }
    cpu.gather_master_gradients();
    gpu.gather_master_gradients();
    const double cpu_norm = cpu.gradient_norm(), gpu_norm = gpu.gradient_norm();
    EXPECT_NEAR(gpu_norm, cpu_norm, 1e-5 * cpu_norm) << "step " << step;
    cpu.step(config.lr, /*max_norm=*/1.0, cpu_norm);  // step 1 clips (norm ~ 10 x sqrt(n))
    gpu.step(config.lr, /*max_norm=*/1.0, gpu_norm);
  }
  EXPECT_EQ(gpu.adam_step(), 3);  // the steps taken, whatever parameter the state map lists first
  EXPECT_EQ(cpu.adam_step(), 3);
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto& m_cpu = cpu.master_weights()[i];
    const auto& m_gpu = gpu.master_weights()[i];
    ASSERT_TRUE(m_gpu.is_cuda());
    EXPECT_FALSE(at::isnan(m_gpu).any().item<bool>());
    EXPECT_LT(testing::max_abs_diff(m_gpu, m_cpu), 1e-5 * (1 + m_cpu.abs().max().item<double>()))
        << "parameter " << i;
    // The bf16 weights are the masters rounded to nearest (the multi-tensor write-back).
    EXPECT_TRUE(at::equal(gpu_params[i].detach(), m_gpu.to(at::kBFloat16))) << "parameter " << i;
    const auto cpu_state = cpu.slices_to_save(0, 1)[i], gpu_state = gpu.slices_to_save(0, 1)[i];
    EXPECT_LT(testing::max_abs_diff(gpu_state.exp_avg, cpu_state.exp_avg), 1e-6);
    EXPECT_LT(testing::max_abs_diff(gpu_state.exp_avg_sq, cpu_state.exp_avg_sq), 1e-7);
    // Each parameter's step count (parameter 1 missed step 2), as torch's AdamW keeps it.
    const auto steps = [](trainer::MasterWeightOptimizer& o, const at::Tensor& master) {
      const auto& state = o.adamw().state().at(master.unsafeGetTensorImpl());
      return static_cast<const torch::optim::AdamWParamState&>(*state).step();
    };
    EXPECT_EQ(steps(gpu, m_gpu), i == 1 ? 2 : 3);
    EXPECT_EQ(steps(cpu, m_cpu), i == 1 ? 2 : 3);
  }
}

}  // namespace
}  // namespace sparsering

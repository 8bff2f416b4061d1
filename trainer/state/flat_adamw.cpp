#include "trainer/state/flat_adamw.h"

#include <algorithm>
#include <cmath>

namespace sparsering::trainer {
namespace {

// Elements per chunk: large enough to keep the vectorised kernels busy, small enough that the
// denominator temporary is a few MiB.
constexpr int64_t kChunk = 1 << 22;

}  // namespace

void flat_adamw_step(at::Tensor& weight, const at::Tensor& grad, at::Tensor& exp_avg,
                     at::Tensor& exp_avg_sq, double lr, const config::OptimizerConfig& config,
                     int64_t step) {
  at::NoGradGuard no_grad;
  const double beta1 = config.beta1, beta2 = config.beta2;
  const double bias_correction1 = 1 - std::pow(beta1, step);
  const double bias_correction2 = 1 - std::pow(beta2, step);
  const double step_size = lr / bias_correction1;
  const int64_t n = weight.numel();
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t length = std::min(kChunk, n - begin);
    auto p = weight.narrow(0, begin, length);
    const auto g = grad.narrow(0, begin, length);
    auto m = exp_avg.narrow(0, begin, length);
    auto v = exp_avg_sq.narrow(0, begin, length);
    // The order of torch::optim::AdamW::step: decoupled decay, moments, denominator, update.
    if (config.weight_decay != 0) p.mul_(1 - lr * config.weight_decay);
    m.mul_(beta1).add_(g, 1 - beta1);
    v.mul_(beta2).addcmul_(g, g, 1 - beta2);
    const auto denom = (v.sqrt() / std::sqrt(bias_correction2)).add_(config.eps);
    p.addcdiv_(m, denom, -step_size);
  }
}

}  // namespace sparsering::trainer

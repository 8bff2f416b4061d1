#include "trainer/optimizer.h"

#include <cmath>

namespace sparsering::trainer {

MasterWeightOptimizer::MasterWeightOptimizer(std::vector<at::Tensor> parameters,
                                             const config::OptimizerConfig& config)
    : parameters_(std::move(parameters)) {
  for (const auto& p : parameters_) {
    if (p.scalar_type() == at::kFloat) {
      masters_.push_back(p);
    } else {
      separate_masters_ = true;
      masters_.push_back(p.detach().to(at::kFloat).requires_grad_(true));
    }
  }
  auto options = torch::optim::AdamWOptions(config.lr)
                     .betas({config.beta1, config.beta2})
                     .eps(config.eps)
                     .weight_decay(config.weight_decay);
  adamw_ = std::make_unique<torch::optim::AdamW>(masters_, options);
}

void MasterWeightOptimizer::zero_grad() {
  for (auto& p : parameters_) p.mutable_grad() = at::Tensor();
  for (auto& m : masters_) m.mutable_grad() = at::Tensor();
}

void MasterWeightOptimizer::gather_master_gradients() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& grad = parameters_[i].grad();
    if (separate_masters_ && parameters_[i].scalar_type() != at::kFloat) {
      masters_[i].mutable_grad() = grad.defined() ? grad.to(at::kFloat) : at::Tensor();
    }
  }
}

double MasterWeightOptimizer::gradient_norm() {
  torch::NoGradGuard no_grad;
  // One host synchronisation for the norm, not one per tensor.
  std::vector<at::Tensor> squares;
  for (const auto& m : masters_) {
    if (m.grad().defined()) squares.push_back(m.grad().pow(2).sum());
  }
  return squares.empty() ? 0.0 : std::sqrt(at::stack(squares).sum().item<double>());
}

void MasterWeightOptimizer::step(double lr, double max_norm, double norm) {
  torch::NoGradGuard no_grad;
  if (max_norm > 0 && norm > max_norm) {
    for (auto& m : masters_) {
      if (m.grad().defined()) m.mutable_grad().mul_(max_norm / (norm + 1e-6));
    }
  }
  for (auto& group : adamw_->param_groups()) group.options().set_lr(lr);
  adamw_->step();
  sync_model_from_masters();
}

void MasterWeightOptimizer::sync_model_from_masters() {
  if (!separate_masters_) return;
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    if (parameters_[i].scalar_type() != at::kFloat) parameters_[i].copy_(masters_[i]);
  }
}

int64_t MasterWeightOptimizer::state_bytes() {
  int64_t bytes = 0;
  if (separate_masters_) {
    for (const auto& master : masters_) bytes += master.nbytes();
  }
  for (const auto& [key, state] : adamw_->state()) {
    const auto& adam = static_cast<const torch::optim::AdamWParamState&>(*state);
    for (const auto* t : {&adam.exp_avg(), &adam.exp_avg_sq(), &adam.max_exp_avg_sq()}) {
      if (t->defined()) bytes += t->nbytes();
    }
  }
  return bytes;
}

int64_t MasterWeightOptimizer::master_gradient_bytes() const {
  int64_t bytes = 0;
  if (!separate_masters_) return bytes;
  for (const auto& master : masters_) {
    if (master.grad().defined()) bytes += master.grad().nbytes();
  }
  return bytes;
}

}  // namespace sparsering::trainer

#include "trainer/state/optimizer.h"

#include <cmath>

namespace sparsering::trainer {
namespace {

torch::optim::AdamWParamState* adamw_state(torch::optim::AdamW& adamw, const at::Tensor& p) {
  auto& states = adamw.state();
  const auto found = states.find(p.unsafeGetTensorImpl());
  if (found == states.end()) return nullptr;
  return static_cast<torch::optim::AdamWParamState*>(found->second.get());
}

StateSlice whole_parameter(size_t index, const at::Tensor& master,
                           torch::optim::AdamWParamState* state) {
  StateSlice slice{index, 0, master.detach().view(-1), {}, {}};
  if (state) {
    slice.exp_avg = state->exp_avg().view(-1);
    slice.exp_avg_sq = state->exp_avg_sq().view(-1);
  }
  return slice;
}

}  // namespace

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

std::vector<StateSlice> MasterWeightOptimizer::slices_to_save(int rank, int world) {
  std::vector<StateSlice> slices;
  for (size_t i = rank; i < masters_.size(); i += world) {
    slices.push_back(whole_parameter(i, masters_[i], adamw_state(*adamw_, masters_[i])));
  }
  return slices;
}

std::vector<StateSlice> MasterWeightOptimizer::slices_to_load(bool with_moments) {
  std::vector<StateSlice> slices;
  for (size_t i = 0; i < masters_.size(); ++i) {
    auto* state = adamw_state(*adamw_, masters_[i]);
    if (with_moments && !state) {
      auto fresh = std::make_unique<torch::optim::AdamWParamState>();
      fresh->step(0);
      fresh->exp_avg(at::zeros_like(masters_[i], at::MemoryFormat::Contiguous));
      fresh->exp_avg_sq(at::zeros_like(masters_[i], at::MemoryFormat::Contiguous));
      state = fresh.get();
      adamw_->state()[masters_[i].unsafeGetTensorImpl()] = std::move(fresh);
    }
    slices.push_back(whole_parameter(i, masters_[i], state));
  }
  return slices;
}

int64_t MasterWeightOptimizer::adam_step() const {
  for (const auto& [key, state] : adamw_->state()) {
    return static_cast<const torch::optim::AdamWParamState&>(*state).step();
  }
  return 0;
}

void MasterWeightOptimizer::finish_load(int64_t adam_step) {
  for (auto& [key, state] : adamw_->state()) {
    static_cast<torch::optim::AdamWParamState&>(*state).step(adam_step);
  }
  sync_model_from_masters();
}

}  // namespace sparsering::trainer

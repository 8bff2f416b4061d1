#include "trainer/state/optimizer.h"

#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>

#include <algorithm>
#include <cmath>
#include <map>

namespace sparsering::trainer {
namespace {

torch::optim::AdamWParamState* adamw_state(torch::optim::AdamW& adamw, const at::Tensor& p) {
  auto& states = adamw.state();
  const auto found = states.find(p.unsafeGetTensorImpl());
  if (found == states.end()) return nullptr;
  return static_cast<torch::optim::AdamWParamState*>(found->second.get());
}

// The parameter's AdamW state, created at step 0 with zero moments (as torch::optim::AdamW does on
// a parameter's first step) when it has none yet.
torch::optim::AdamWParamState* fresh_or_existing_state(torch::optim::AdamW& adamw,
                                                       const at::Tensor& master) {
  if (auto* state = adamw_state(adamw, master)) return state;
  auto fresh = std::make_unique<torch::optim::AdamWParamState>();
  fresh->step(0);
  fresh->exp_avg(at::zeros_like(master, at::MemoryFormat::Contiguous));
  fresh->exp_avg_sq(at::zeros_like(master, at::MemoryFormat::Contiguous));
  auto* state = fresh.get();
  adamw.state()[master.unsafeGetTensorImpl()] = std::move(fresh);
  return state;
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
  std::vector<at::Tensor> grads;
  for (const auto& m : masters_) {
    if (m.grad().defined()) grads.push_back(m.grad());
  }
  if (grads.empty()) return 0.0;
  if (grads.front().is_cuda()) {  // multi-tensor norms: a few launches, not two per tensor
    return at::stack(at::_foreach_norm(grads)).pow(2).sum().sqrt().item<double>();
  }
  std::vector<at::Tensor> squares;
  for (const auto& g : grads) squares.push_back(g.pow(2).sum());
  return std::sqrt(at::stack(squares).sum().item<double>());
}

void MasterWeightOptimizer::step(double lr, double max_norm, double norm) {
  torch::NoGradGuard no_grad;
  if (max_norm > 0 && norm > max_norm) {
    std::vector<at::Tensor> grads;
    for (auto& m : masters_) {
      if (m.grad().defined()) grads.push_back(m.grad());
    }
    at::_foreach_mul_(grads, max_norm / (norm + 1e-6));
  }
  if (!masters_.empty() && masters_.front().is_cuda()) {
    fused_cuda_step(lr);
  } else {
    for (auto& group : adamw_->param_groups()) group.options().set_lr(lr);
    adamw_->step();
  }
  sync_model_from_masters();
}

// torch::optim::AdamW steps one parameter at a time, about ten kernels each: ~1,100 launches for
// a 12-layer model, several ms of a step. ATen's multi-tensor AdamW (the kernel behind
// torch.optim.AdamW(fused=True)) does the same update (decoupled decay, bias-corrected moments)
// in a few launches. Its state stays in torch's AdamWParamState, so checkpoints are unchanged.
// The arithmetic order differs from the per-parameter ops by rounding only (fp32).
void MasterWeightOptimizer::fused_cuda_step(double lr) {
  const auto& options =
      static_cast<const torch::optim::AdamWOptions&>(adamw_->param_groups().front().options());
  // Parameters that have a gradient, grouped by their step count (all equal in practice).
  std::map<int64_t, std::vector<size_t>> by_step;
  for (size_t i = 0; i < masters_.size(); ++i) {
    if (!masters_[i].grad().defined()) continue;
    by_step[fresh_or_existing_state(*adamw_, masters_[i])->step()].push_back(i);
  }
  for (const auto& [step, indices] : by_step) {
    std::vector<at::Tensor> weights, grads, exp_avgs, exp_avg_sqs, steps;
    // The kernel reads each parameter's step (after the increment) from a device tensor.
    const auto next_step =
        at::full({}, static_cast<double>(step + 1), masters_.front().options().dtype(at::kFloat));
    for (const size_t i : indices) {
      auto* state = adamw_state(*adamw_, masters_[i]);
      weights.push_back(masters_[i].detach());
      grads.push_back(masters_[i].grad());
      exp_avgs.push_back(state->exp_avg());
      exp_avg_sqs.push_back(state->exp_avg_sq());
      steps.push_back(next_step);
      state->step(step + 1);
    }
    const auto [beta1, beta2] = options.betas();
    at::_fused_adamw_(weights, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, lr,
                      beta1, beta2, options.weight_decay(), options.eps(), /*amsgrad=*/false,
                      /*maximize=*/false);
  }
}

void MasterWeightOptimizer::sync_model_from_masters() {
  if (!separate_masters_) return;
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> weights, masters;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    if (parameters_[i].scalar_type() == at::kFloat) continue;
    weights.push_back(parameters_[i]);
    masters.push_back(masters_[i]);
  }
  at::_foreach_copy_(weights, masters);  // one launch per few tensors on GPUs
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
    auto* state = with_moments ? fresh_or_existing_state(*adamw_, masters_[i])
                               : adamw_state(*adamw_, masters_[i]);
    slices.push_back(whole_parameter(i, masters_[i], state));
  }
  return slices;
}

// A parameter that had no gradient in some step lags behind; the checkpoint keeps one count, the
// largest (the steps the optimizer took), not whichever state the hash map lists first.
int64_t MasterWeightOptimizer::adam_step() const {
  int64_t step = 0;
  for (const auto& [key, state] : adamw_->state()) {
    step = std::max(step, static_cast<const torch::optim::AdamWParamState&>(*state).step());
  }
  return step;
}

void MasterWeightOptimizer::finish_load(int64_t adam_step) {
  for (auto& [key, state] : adamw_->state()) {
    static_cast<torch::optim::AdamWParamState&>(*state).step(adam_step);
  }
  sync_model_from_masters();
}

}  // namespace sparsering::trainer

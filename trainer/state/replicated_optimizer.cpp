#include "trainer/state/replicated_optimizer.h"

#include "trainer/state/sharded_optimizer.h"

namespace sparsering::trainer {

ReplicatedOptimizer::ReplicatedOptimizer(const config::Experiment& experiment,
                                         const std::vector<std::string>& names,
                                         const std::vector<at::Tensor>& parameters,
                                         parallel::Communicator& mesh, NMSparsity* nm_sparsity)
    : parameters_(parameters),
      optimizer_(parameters, experiment.optimizer),
      gradient_sync_(mesh, parameters,
                     static_cast<int64_t>(experiment.parallel.grad_bucket_mb) << 20),
      nm_sparsity_(nm_sparsity) {
  if (nm_sparsity_)
    sparse_masters_ = nm_sparsity_->sparse_weights(names, optimizer_.master_weights());
}

void ReplicatedOptimizer::update_nm_masks(int64_t step) {
  if (nm_sparsity_) nm_sparsity_->update_masks(sparse_masters_, step);
}

void ReplicatedOptimizer::synchronize_gradients() {
  gradient_sync_.synchronize();
  optimizer_.gather_master_gradients();
}

void ReplicatedOptimizer::add_sr_ste_term() {
  if (nm_sparsity_) nm_sparsity_->add_sr_ste_term(sparse_masters_);
}

void ReplicatedOptimizer::step(double lr, double max_norm, double norm) {
  optimizer_.step(lr, max_norm, norm);
}

ModelStateBytes ReplicatedOptimizer::memory() const {
  ModelStateBytes bytes;
  for (const auto& parameter : parameters_) {
    bytes.weights += parameter.nbytes();
    if (parameter.grad().defined()) bytes.gradients += parameter.grad().nbytes();
  }
  bytes.gradients += optimizer_.master_gradient_bytes();
  bytes.optimizer = optimizer_.state_bytes();
  return bytes;
}

std::unique_ptr<TrainingOptimizer> make_training_optimizer(
    const config::Experiment& experiment, const std::vector<std::string>& names,
    const std::vector<at::Tensor>& parameters, parallel::Communicator& mesh,
    NMSparsity* nm_sparsity) {
  if (experiment.parallel.zero_stage == 0) {
    return std::make_unique<ReplicatedOptimizer>(experiment, names, parameters, mesh, nm_sparsity);
  }
  return std::make_unique<ShardedOptimizer>(experiment, names, parameters, mesh, nm_sparsity);
}

}  // namespace sparsering::trainer

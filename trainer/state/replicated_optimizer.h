// parallel.zero_stage 0: every rank holds the whole model state. Gradients are all-reduced over
// the mesh in buckets (parallel::GradientSync), then every rank steps AdamW on all fp32 masters.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "parallel/gradient_sync.h"
#include "trainer/nm/nm_sparsity.h"
#include "trainer/state/optimizer.h"
#include "trainer/state/training_optimizer.h"

namespace sparsering::trainer {

class ReplicatedOptimizer : public TrainingOptimizer {
 public:
  ReplicatedOptimizer(const config::Experiment& experiment, const std::vector<std::string>& names,
                      const std::vector<at::Tensor>& parameters, parallel::Communicator& mesh,
                      NMSparsity* nm_sparsity);

  void zero_grad() override { optimizer_.zero_grad(); }
  void update_nm_masks(int64_t step) override;
  void synchronize_gradients() override;
  void add_sr_ste_term() override;
  double gradient_norm() override { return optimizer_.gradient_norm(); }
  void step(double lr, double max_norm, double norm) override;
  ModelStateBytes memory() const override;

  std::vector<StateSlice> slices_to_save(int rank, int world) override {
    return optimizer_.slices_to_save(rank, world);
  }
  std::vector<StateSlice> slices_to_load(bool with_moments) override {
    return optimizer_.slices_to_load(with_moments);
  }
  int64_t adam_step() const override { return optimizer_.adam_step(); }
  void finish_load(int64_t adam_step) override { optimizer_.finish_load(adam_step); }

 private:
  std::vector<at::Tensor> parameters_;
  mutable MasterWeightOptimizer optimizer_;
  parallel::GradientSync gradient_sync_;
  NMSparsity* nm_sparsity_;
  std::vector<NamedWeight> sparse_masters_;  // the fp32 masters of the N:M layers
};

}  // namespace sparsering::trainer

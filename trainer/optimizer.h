// AdamW on fp32 master weights. With bf16 model weights the optimizer keeps an fp32 copy of each
// parameter, steps it with the fp32 gradient, and writes the rounded result back to the model.
#pragma once

#include <torch/optim/adamw.h>

#include <memory>
#include <vector>

#include "configs/config.h"

namespace sparsering::trainer {

class MasterWeightOptimizer {
 public:
  MasterWeightOptimizer(std::vector<at::Tensor> parameters, const config::OptimizerConfig& config);

  void zero_grad();
  // Clips the global gradient norm to `max_norm` (0 = off), steps AdamW at `lr` and returns the
  // norm before clipping. Gradients must already be synchronised, so every rank sees the same.
  double step(double lr, double max_norm);

  std::vector<at::Tensor>& master_weights() { return masters_; }
  torch::optim::AdamW& adamw() { return *adamw_; }

 private:
  std::vector<at::Tensor> parameters_;
  std::vector<at::Tensor> masters_;  // the parameters themselves when they are fp32
  bool separate_masters_ = false;
  std::unique_ptr<torch::optim::AdamW> adamw_;
};

}  // namespace sparsering::trainer

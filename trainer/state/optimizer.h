// AdamW on fp32 master weights. With bf16 model weights the optimizer keeps an fp32 copy of each
// parameter, steps it with the fp32 gradient, and writes the rounded result back to the model.
#pragma once

#include <torch/optim/adamw.h>

#include <memory>
#include <vector>

#include "configs/config.h"
#include "trainer/state/training_optimizer.h"

namespace sparsering::trainer {

// Also the replicated (zero_stage 0) model state a checkpoint saves and loads: rank r saves the
// whole parameters r, r + W, r + 2W, ...; a load fills every parameter.
class MasterWeightOptimizer : public CheckpointState {
 public:
  MasterWeightOptimizer(std::vector<at::Tensor> parameters, const config::OptimizerConfig& config);

  void zero_grad();
  // Moves the model's (bf16) gradients onto the fp32 masters; call once per step, after the
  // gradient sync and before anything that edits the fp32 gradients (the SR-STE term).
  void gather_master_gradients();
  // Global L2 norm of the masters' gradients (one host synchronisation). Gradients must already
  // be synchronised, so every rank sees the same norm.
  double gradient_norm();
  // Clips to `max_norm` (0 = off) given the norm from gradient_norm(), steps AdamW at `lr` (on
  // GPUs in one multi-tensor kernel, on CPUs torch::optim::AdamW) and writes the result back to
  // the model's weights.
  void step(double lr, double max_norm, double norm);
  // Copies the masters into the model's weights (after loading a checkpoint).
  void sync_model_from_masters();

  std::vector<at::Tensor>& master_weights() { return masters_; }
  // Memory of the optimizer's own state: the fp32 masters when they are separate from the model's
  // weights, and AdamW's moments.
  int64_t state_bytes();
  // Memory of the masters' fp32 gradients when they are separate from the model's gradients.
  int64_t master_gradient_bytes() const;
  torch::optim::AdamW& adamw() { return *adamw_; }

  std::vector<StateSlice> slices_to_save(int rank, int world) override;
  std::vector<StateSlice> slices_to_load(bool with_moments) override;
  int64_t adam_step() const override;
  void finish_load(int64_t adam_step) override;

 private:
  // The AdamW step of CUDA masters in ATen's multi-tensor kernel (see optimizer.cpp).
  void fused_cuda_step(double lr);

  std::vector<at::Tensor> parameters_;
  std::vector<at::Tensor> masters_;  // the parameters themselves when they are fp32
  bool separate_masters_ = false;
  std::unique_ptr<torch::optim::AdamW> adamw_;
};

}  // namespace sparsering::trainer

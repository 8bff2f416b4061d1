// What the training loop asks of the optimizer, whichever way the model state is held:
// replicated on every rank (parallel.zero_stage 0, ReplicatedOptimizer) or sharded over the
// dp x cp mesh (stages 1-3, optionally offloaded to the host, ShardedOptimizer). Both sum the
// gradients over the whole mesh, apply clipping, the NaN policy's norm, N:M masks and AdamW the
// same way, so every stage trains the same model.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "configs/config.h"
#include "parallel/communicator.h"

namespace sparsering::trainer {

class LayerGather;
class NMSparsity;

// A contiguous run of one parameter's elements with its fp32 master weights and AdamW moments:
// the unit checkpoints are saved and loaded in, so any mesh or stage can read any other's files.
struct StateSlice {
  size_t parameter = 0;   // index in the model's parameter order
  int64_t begin = 0;      // first element within the flattened parameter
  at::Tensor weight;      // fp32 [length]; a view the loader writes into
  at::Tensor exp_avg;     // fp32 [length], or undefined when there is no AdamW state (yet)
  at::Tensor exp_avg_sq;  // as exp_avg
};

// The per-rank model state the checkpoint saves and restores.
class CheckpointState {
 public:
  virtual ~CheckpointState() = default;
  // The slices this rank writes: every element of every parameter is written by exactly one rank.
  virtual std::vector<StateSlice> slices_to_save(int rank, int world) = 0;
  // The slices this rank holds and a load fills; with `with_moments` their moments are allocated
  // (zero) where there are none yet.
  virtual std::vector<StateSlice> slices_to_load(bool with_moments) = 0;
  // AdamW steps taken (0 before the first).
  virtual int64_t adam_step() const = 0;
  // After the slices were filled: takes the AdamW step count and refreshes the model's weights.
  virtual void finish_load(int64_t adam_step) = 0;
};

// Bytes of the model state this rank holds, by kind (for the profile's memory breakdown and the
// memory-accounting tests).
struct ModelStateBytes {
  int64_t weights = 0, gradients = 0, optimizer = 0;  // on the model's device
  int64_t host_optimizer = 0;  // masters, moments and gradients offloaded to host memory
};

class TrainingOptimizer : public CheckpointState {
 public:
  // Drops the gradients of the previous step.
  virtual void zero_grad() = 0;
  // Before the forward of step `step`: the N:M masks from the current fp32 masters (no-op
  // without N:M sparsity).
  virtual void update_nm_masks(int64_t step) = 0;
  // After the backward: gradients summed over the mesh onto the fp32 masters this rank steps.
  virtual void synchronize_gradients() = 0;
  // SR-STE's decay term on the synchronised fp32 gradients (no-op for other modes).
  virtual void add_sr_ste_term() = 0;
  // Global L2 norm of the gradients, the same on every rank.
  virtual double gradient_norm() = 0;
  // Clips to `max_norm` (0 = off) given `norm`, steps AdamW at `lr` and updates the model's
  // weights.
  virtual void step(double lr, double max_norm, double norm) = 0;
  virtual ModelStateBytes memory() const = 0;
  // zero_stage 3: what the model calls around each layer (StepContext::layer_gather); nullptr
  // when the weights stay whole.
  virtual LayerGather* layer_gather() { return nullptr; }
};

// The optimizer parallel.zero_stage and optimizer.offload ask for, over `mesh` (every rank of
// the job). `names` and `parameters` are the model's named_parameters() in order; `nm_sparsity`
// (nullptr when disabled) receives the masks.
std::unique_ptr<TrainingOptimizer> make_training_optimizer(
    const config::Experiment& experiment, const std::vector<std::string>& names,
    const std::vector<at::Tensor>& parameters, parallel::Communicator& mesh,
    NMSparsity* nm_sparsity);

}  // namespace sparsering::trainer

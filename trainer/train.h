// The training run: data -> model forward through the sparse ring -> chunked loss -> backward ->
// gradient sync -> AdamW, one line of metrics per step.
#pragma once

#include <string>
#include <vector>

#include "configs/config.h"
#include "parallel/process_groups.h"

namespace sparsering::trainer {

struct TrainOptions {
  std::string run_dir;     // empty = <train.runs_root>/<name>
  std::string resume;      // "" = fresh start, "auto" = newest intact checkpoint if any, or a path
  bool overwrite = false;  // move a previous run's files aside (trainer/run_directory.h)
};

struct TrainResult {
  std::vector<double> losses;  // global mean loss of every step run by this call
  std::string run_dir;
  int64_t first_step = 1;     // > 1 after a resume
  int64_t skipped_steps = 0;  // non-finite steps skipped under train.nan_policy = SKIP_STEP
};

// The device this rank trains on (train.device; AUTO = this rank's GPU when there is one), made
// current so NCCL communicators are created on it.
at::Device select_device(const config::Experiment& experiment);

// Trains `experiment` on the job's ranks. Every rank calls it.
TrainResult train(const config::Experiment& experiment, parallel::ProcessGroups& groups,
                  const at::Device& device, const TrainOptions& options);

// Decoder parameters outside the embedding (for FLOP counts).
int64_t matmul_parameters(const config::ModelConfig& model);

}  // namespace sparsering::trainer

// `sparsering plan`: the per-rank memory of a training run, computed from the config without
// allocating anything, and the longest context that fits a GPU. The same accounting as the
// profiler's measured breakdown (weights, gradients, optimizer state) plus a model of the
// activations: what the profile's peak checks.
#pragma once

#include <cstdint>
#include <string>

#include "configs/config.h"

namespace sparsering::trainer {

struct MemoryPlan {
  int world_size = 1;
  int64_t parameters = 0;            // whole model
  int64_t weight_bytes = 0;          // per rank, peak (stage 3: the slices plus a gathered layer)
  int64_t gradient_bytes = 0;        // per rank, peak
  int64_t optimizer_bytes = 0;       // per rank, on the GPU
  int64_t host_optimizer_bytes = 0;  // per rank, offloaded to host memory
  double activation_bytes_per_token = 0;  // per local token and sequence, in the backward (peak)
  double loss_bytes_per_token = 0;        // per local token and sequence, at the loss
  int64_t workspace_bytes = 0;            // the loss chunk's logits and their gradient
  int64_t reserved_bytes = 0;             // of gpu_memory_bytes: CUDA context, NCCL, fragmentation
  int64_t local_tokens = 0;               // tokens per rank at train.sequence_length
  int64_t total_bytes = 0;                // per rank at train.sequence_length
  int64_t longest_context = 0;  // tokens per sequence that fit `gpu_memory_bytes` (0: none)
  bool context_limited_by_model = false;  // longest_context is model.max_context, not memory
};

// `world_size` ranks (dp x cp taken from the config; the mesh over which stages 1-3 shard).
MemoryPlan plan_memory(const config::Experiment& experiment, int world_size,
                       int64_t gpu_memory_bytes);

// The smallest context-parallel size (u, 2u, 4u, ... up to 1024, u = head_parallel_size, the
// data-parallel size of `world_size` kept) at which train.sequence_length fits
// `gpu_memory_bytes` with the reserve; 0 if none does.
int smallest_fitting_context_parallel(const config::Experiment& experiment, int world_size,
                                      int64_t gpu_memory_bytes);

// The per-rank total of the plan for the run as configured (dp x cp ranks): what a GPU run's
// profile prints beside its measured peak.
int64_t planned_peak_bytes(const config::Experiment& experiment);

// The plan as a table for the terminal.
std::string memory_plan_table(const config::Experiment& experiment, const MemoryPlan& plan,
                              int64_t gpu_memory_bytes);

}  // namespace sparsering::trainer

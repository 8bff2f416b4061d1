// AdamW on flat fp32 buffers (a rank's slice of the sharded state), element for element the
// arithmetic of torch::optim::AdamW, so the sharded stages step exactly what stage 0 steps.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "configs/config.h"

namespace sparsering::trainer {

// One AdamW step on `weight` (fp32 [n]) with `grad`, updating the moments in place. `step` counts
// from 1. Works in chunks so that the temporaries stay small (host memory when offloaded).
void flat_adamw_step(at::Tensor& weight, const at::Tensor& grad, at::Tensor& exp_avg,
                     at::Tensor& exp_avg_sq, double lr, const config::OptimizerConfig& config,
                     int64_t step);

}  // namespace sparsering::trainer

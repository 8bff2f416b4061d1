// Learning-rate schedule: linear warm-up from 0, then cosine, linear or constant down to
// min_lr_ratio x peak at the last step.
#pragma once

#include "configs/config.h"

namespace sparsering::trainer {

// `step` counts from 1.
double learning_rate(const config::ScheduleConfig& schedule, double peak_lr, int step,
                     int total_steps);

}  // namespace sparsering::trainer

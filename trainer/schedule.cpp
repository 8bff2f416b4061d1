#include "trainer/schedule.h"

#include <algorithm>
#include <cmath>

namespace sparsering::trainer {

double learning_rate(const config::ScheduleConfig& schedule, double peak_lr, int step,
                     int total_steps) {
  if (step <= schedule.warmup_steps) return peak_lr * step / schedule.warmup_steps;
  const double min_lr = peak_lr * schedule.min_lr_ratio;
  const double progress = std::clamp(static_cast<double>(step - schedule.warmup_steps) /
                                         std::max(1, total_steps - schedule.warmup_steps),
                                     0.0, 1.0);
  switch (schedule.kind) {
    case config::ScheduleKind::kCosine:
      return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
    case config::ScheduleKind::kLinear:
      return peak_lr - (peak_lr - min_lr) * progress;
    case config::ScheduleKind::kConstant:
      return peak_lr;
  }
  return peak_lr;
}

}  // namespace sparsering::trainer

// The decay factor beta of progressive gradient flow (docs/algorithms.md, 4.2): pruned weights
// enter the forward pass as beta x w, with beta decaying from 1 (dense) to 0 (strictly N:M).
#pragma once

#include <cstdint>
#include <string>

#include "configs/config.h"

namespace sparsering::trainer {

// beta as a pure function of the training step, so that a resumed run continues the schedule
// exactly. Steps are the trainer's, counted from 1; the decay clock is t = step - 1, the
// optimizer steps taken before this step's forward, which is the published code's 0-based clock
// (it counts optimizer updates from 0), so beta = 1 on the first step of MDGF and SDGF. Step 0
// ("before training") reads as step 1.
//   STE, SR_STE:       0 (pure masked weight)
//   MDGF_LINEAR:       max(0, 1 - kappa t)
//   MDGF_EXPONENTIAL:  exp(-kappa t)
//   SDGF_STEPWISE:     max(0, 1 - sdgf_step floor(t / sdgf_interval))
//   SDGF_GEOMETRIC:    sdgf_factor ^ floor(t / sdgf_interval)
//   and 0 from step hard_prune_step on (when >= 0), whatever the mode.
// Note: the published SDGF changes the N:M pattern itself over epoch frames (e.g. 7:8 -> 4:8 ->
// 2:8 -> 1:8); sparsering.proto instead defines SDGF as these stepped beta schedules on a fixed
// N:M mask (docs/algorithms.md, 4.2).
class NMSchedule {
 public:
  explicit NMSchedule(const config::NMSparsityConfig& config);

  double beta(int64_t step) const;

 private:
  config::NMMode mode_;
  double kappa_, sdgf_step_, sdgf_factor_;
  int64_t sdgf_interval_, hard_prune_step_;
};

// What a checkpoint keeps of the schedule: the last step whose masks were computed (0 = none)
// and its beta, which lets a resume check that the configured schedule still gives that beta.
// Masks need no saving: they are recomputed every step from the weights.
struct NMScheduleState {
  int64_t step = 0;
  double beta = 0.0;

  // "step=<integer> beta=<hexadecimal float>": hexadecimal so beta round-trips bit for bit.
  std::string to_string() const;
  // Parses to_string's text; throws UserError naming the text otherwise.
  static NMScheduleState from_string(const std::string& text);
};

}  // namespace sparsering::trainer

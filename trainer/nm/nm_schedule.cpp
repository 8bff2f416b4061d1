#include "trainer/nm/nm_schedule.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "configs/user_error.h"

namespace sparsering::trainer {

NMSchedule::NMSchedule(const config::NMSparsityConfig& config)
    : mode_(config.mode),
      kappa_(config.kappa),
      sdgf_step_(config.sdgf_step),
      sdgf_factor_(config.sdgf_factor),
      sdgf_interval_(config.sdgf_interval),
      hard_prune_step_(config.hard_prune_step) {
  if (sdgf_interval_ < 1) {
    throw std::invalid_argument("NMSchedule: sdgf_interval must be >= 1, got " +
                                std::to_string(sdgf_interval_));
  }
}

double NMSchedule::beta(int64_t step) const {
  if (step < 0) throw std::invalid_argument("NMSchedule::beta: negative step");
  if (hard_prune_step_ >= 0 && step >= hard_prune_step_) return 0.0;
  const int64_t t = std::max<int64_t>(step - 1, 0);
  const int64_t intervals = t / sdgf_interval_;
  switch (mode_) {
    case config::NMMode::kSte:
    case config::NMMode::kSrSte:
      return 0.0;
    case config::NMMode::kMdgfLinear:
      return std::max(0.0, 1.0 - kappa_ * static_cast<double>(t));
    case config::NMMode::kMdgfExponential:
      return std::exp(-kappa_ * static_cast<double>(t));
    case config::NMMode::kSdgfStepwise:
      return std::max(0.0, 1.0 - sdgf_step_ * static_cast<double>(intervals));
    case config::NMMode::kSdgfGeometric:
      return std::pow(sdgf_factor_, static_cast<double>(intervals));
  }
  throw std::logic_error("NMSchedule::beta: unknown mode");
}

std::string NMScheduleState::to_string() const {
  std::ostringstream text;
  text << "step=" << step << " beta=" << std::hexfloat << beta;
  return text.str();
}

NMScheduleState NMScheduleState::from_string(const std::string& text) {
  // strtoll/strtod rather than streams: libstdc++ streams do not parse hexadecimal floats.
  const auto fail = [&text]() {
    return UserError("nm_sparsity checkpoint state '" + text +
                     "': expected 'step=<integer> beta=<float>'; the checkpoint is damaged");
  };
  const char* cursor = text.c_str();
  if (std::strncmp(cursor, "step=", 5) != 0) throw fail();
  char* end = nullptr;
  NMScheduleState state;
  state.step = std::strtoll(cursor + 5, &end, 10);
  if (end == cursor + 5 || state.step < 0 || std::strncmp(end, " beta=", 6) != 0) throw fail();
  cursor = end + 6;
  state.beta = std::strtod(cursor, &end);
  if (end == cursor || *end != '\0' || !std::isfinite(state.beta)) throw fail();
  return state;
}

}  // namespace sparsering::trainer

// The checks between a checkpoint and the training that wants to continue it, beyond what
// Checkpointer::verify checks for every reader (intact shards, same model and mesh): the settings
// that define the saved state must match (configs/resume_compatibility.h), and the step budget
// must reach past the checkpoint's step.
#pragma once

#include <string>

#include "configs/config.h"

namespace sparsering::trainer {

// Throws UserError naming `step_dir`, the setting and the fix when `experiment` cannot continue
// the checkpoint in `step_dir`.
void check_resume_compatible(const std::string& step_dir, const config::Experiment& experiment);

}  // namespace sparsering::trainer

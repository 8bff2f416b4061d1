// Where a run's files live: the run directory (--run-dir, else <train.runs_root>/<name>) and its
// checkpoint directory (checkpoint.dir, else <run dir>/checkpoints). train, eval, import-hf and
// export-hf all resolve them here, so they agree on where a run is.
#pragma once

#include <string>

#include "configs/config.h"

namespace sparsering::trainer {

struct RunPaths {
  std::string run_dir;
  std::string checkpoint_dir;

  // `run_dir_option`: the --run-dir given on the command line, or empty.
  static RunPaths of(const config::Experiment& experiment, const std::string& run_dir_option);
  std::string file(const std::string& name) const;  // <run dir>/<name>
};

}  // namespace sparsering::trainer

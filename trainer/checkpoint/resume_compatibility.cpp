#include "trainer/checkpoint/resume_compatibility.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "configs/checkpoint_metadata.h"
#include "configs/resume_compatibility.h"
#include "configs/user_error.h"

namespace sparsering::trainer {

void check_resume_compatible(const std::string& step_dir, const config::Experiment& experiment) {
  const std::string metadata_path = (std::filesystem::path(step_dir) / "metadata.pbtxt").string();
  std::ifstream file(metadata_path);
  std::stringstream text;
  text << file.rdbuf();
  const config::CheckpointMetadata metadata =
      config::parse_checkpoint_metadata(text.str(), metadata_path);
  const std::string problem =
      config::resume_incompatibility(metadata.config_text, experiment.resolved_text);
  if (!problem.empty()) {
    throw UserError("--resume: " + step_dir + " cannot be continued by this config: " + problem +
                    "; use the checkpoint's settings (its config.pbtxt) or start a new run "
                    "(another --run-dir, or --overwrite)");
  }
  if (experiment.train.steps <= metadata.step) {
    throw UserError("train.steps = " + std::to_string(experiment.train.steps) +
                    " is at or below the step of the checkpoint to resume (" +
                    std::to_string(metadata.step) + ", " + step_dir +
                    "): nothing to train; raise train.steps above " +
                    std::to_string(metadata.step));
  }
}

}  // namespace sparsering::trainer

#include "trainer/run_paths.h"

#include <filesystem>

namespace sparsering::trainer {

namespace fs = std::filesystem;

RunPaths RunPaths::of(const config::Experiment& e, const std::string& run_dir_option) {
  RunPaths paths;
  paths.run_dir =
      run_dir_option.empty() ? (fs::path(e.train.runs_root) / e.name).string() : run_dir_option;
  paths.checkpoint_dir = e.checkpoint.dir.empty()
                             ? (fs::path(paths.run_dir) / "checkpoints").string()
                             : e.checkpoint.dir;
  return paths;
}

std::string RunPaths::file(const std::string& name) const {
  return (fs::path(run_dir) / name).string();
}

}  // namespace sparsering::trainer

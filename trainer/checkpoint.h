// Checkpoints: directories <dir>/step_XXXXXXXX/ holding one shard per rank (rank r saves the fp32
// master weights and AdamW state of parameters r, r + W, r + 2W, ...) and metadata.pbtxt (step,
// resolved config, mesh, data position, N:M state, shard sizes and checksums).
//
// Writes are atomic: shards and metadata go to step_XXXXXXXX.tmp, which is renamed when complete,
// and `latest` is replaced (write + rename) last. A job killed at any moment leaves the previous
// checkpoint and `latest` intact; a half-written .tmp directory is never read and is removed by the
// next save.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "configs/checkpoint_metadata.h"
#include "configs/config.h"
#include "parallel/communicator.h"
#include "trainer/optimizer.h"

namespace sparsering::trainer {

struct ResumeState {
  int64_t step = 0;  // optimizer steps completed
  int64_t sequences_consumed = 0;
  std::string nm_state;
};

class Checkpointer {
 public:
  // `world` is every rank of the job; saving and loading are collective over it.
  Checkpointer(std::string dir, const config::Experiment& experiment,
               parallel::Communicator& world);

  const std::string& dir() const { return dir_; }

  void save(const ResumeState& state, MasterWeightOptimizer& optimizer);

  // The checkpoint directory `resume` names: "auto" = the newest complete and intact one under
  // dir() (none: nullopt, a fresh start), else a path to a step directory or a checkpoint dir.
  // Throws UserError when a named checkpoint is missing, corrupt or incompatible; the message
  // names `flag`, the option the user gave it with.
  std::optional<std::string> find(const std::string& resume,
                                  const std::string& flag = "--resume") const;

  // Loads the checkpoint into the optimizer (and so the model) and returns its state.
  ResumeState load(const std::string& step_dir, MasterWeightOptimizer& optimizer);

  // Checks a step directory: metadata parses, every shard exists with its recorded size and
  // checksum, the model and mesh match this run. Returns the problem, or "" when it is good.
  std::string verify(const std::string& step_dir) const;

 private:
  std::string dir_;
  int keep_last_;
  const config::Experiment& experiment_;
  parallel::Communicator& world_;
};

// FNV-1a 64 of a file's bytes (checkpoint integrity, not security).
uint64_t file_checksum(const std::string& path);

}  // namespace sparsering::trainer

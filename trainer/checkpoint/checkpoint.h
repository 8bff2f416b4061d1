// Checkpoints: directories <dir>/step_XXXXXXXX/ holding one shard per rank and metadata.pbtxt
// (step, resolved config, mesh, data position, N:M state, shard sizes and checksums). A shard
// holds slices: (parameter, first element, length) with the fp32 master weights and AdamW moments
// of those elements. Under parallel.zero_stage 0 rank r saves whole parameters r, r + W, ...;
// sharded stages save each rank's own slices. A load fills the slices the loading rank holds from
// whichever saved slices overlap them, so a checkpoint reshards on load: any mesh, stage or
// offload setting reads any other's checkpoint.
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
#include "trainer/state/training_optimizer.h"

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

  void save(const ResumeState& state, CheckpointState& model_state);

  // The checkpoint directory `resume` names: "auto" = the newest complete and intact one under
  // dir() (none: nullopt, a fresh start), else a path to a step directory or a checkpoint dir.
  // Throws UserError when a named checkpoint is missing, corrupt or incompatible; the message
  // names `flag`, the option the user gave it with.
  std::optional<std::string> find(const std::string& resume,
                                  const std::string& flag = "--resume") const;

  // Loads the checkpoint into `model_state` (and so the model) and returns its state. Throws
  // UserError when the shards do not cover every element this rank holds.
  ResumeState load(const std::string& step_dir, CheckpointState& model_state);

  // Checks a step directory: metadata parses, every shard exists with its recorded size and
  // checksum, the model matches this run
  // (the mesh may differ: loads reshard). Returns the problem, or "" when it is good.
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

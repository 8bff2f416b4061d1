// Ownership of a run directory by the training that runs in it.
//
// A run holds an exclusive lock (flock) on <run dir>/.sparsering.lock for its lifetime, so a
// second training started on the same directory refuses with one line naming the holder (host,
// pid, start time). The kernel drops the lock when the process ends, however it ends.
//
// A directory that holds a previous run's outputs (config.pbtxt, metrics.jsonl, checkpoints, ...)
// is only trained in again with --resume (continue it) or --overwrite, which moves those outputs
// into <run dir>/overwritten-<UTC time>/: nothing is deleted.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace sparsering::trainer {

// An exclusive lock on a directory, held until destruction (or process exit).
class DirectoryLock {
 public:
  // Creates `dir` if needed and locks it, or throws UserError naming the holder.
  explicit DirectoryLock(const std::string& dir);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

// The outputs of an earlier training found in `run_dir` (names relative to it), and in
// `checkpoint_dir` when that lies outside the run directory (its step_* directories and
// `latest`, named by full path).
std::vector<std::string> previous_run_files(const std::string& run_dir,
                                            const std::string& checkpoint_dir);

// Moves `files` (as previous_run_files returns them) aside into overwritten-<UTC time>/ of the
// directory holding each. Returns the directories they went to, for the message.
std::vector<std::string> move_aside(const std::string& run_dir,
                                    const std::vector<std::string>& files);

// What train does with the run directory before it writes anything: lock it (and an outside
// checkpoint directory), refuse a previous run's files unless `resume` or `overwrite`, move them
// aside for `overwrite`, and prove both directories writable. Rank 0 only; the locks live as long
// as the returned object.
struct RunDirectoryClaim {
  std::vector<std::unique_ptr<DirectoryLock>> locks;
};
std::unique_ptr<RunDirectoryClaim> claim_run_directory(const std::string& run_dir,
                                                       const std::string& checkpoint_dir,
                                                       bool resume, bool overwrite);

// `--resume auto` found no checkpoint to continue: a previous run's files left without one
// (a run that never checkpointed) are moved aside with a line saying so, so the fresh start
// overwrites nothing. Rank 0 only.
void settle_fresh_start(const std::string& run_dir, const std::string& checkpoint_dir);

}  // namespace sparsering::trainer

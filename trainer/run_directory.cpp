#include "trainer/run_directory.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "configs/user_error.h"
#include "trainer/checkpoint/atomic_file.h"

namespace sparsering::trainer {
namespace {

namespace fs = std::filesystem;

constexpr const char* kLockFile = ".sparsering.lock";

// What a training writes into its run directory (trainer/run_outputs.h, train.cpp, eval).
const std::vector<std::string> kRunOutputs = {
    "config.pbtxt", "metrics.jsonl", "summary.json",      "logs", "checkpoints", "tensorboard",
    "trace.json",   "eval.json",     "needle_heatmap.ppm"};

std::string utc_stamp() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof(text), "%Y%m%dT%H%M%SZ", std::gmtime(&now));
  return text;
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return "unknown host";
  return name;
}

bool is_checkpoint_entry(const std::string& name) {
  return name == "latest" || name.rfind("step_", 0) == 0;
}

// A directory's absolute spelling without symlinks, "." or a trailing slash.
fs::path normalized(const std::string& dir) {
  std::error_code error;
  fs::path path = fs::weakly_canonical(fs::absolute(dir), error).lexically_normal();
  if (!path.has_filename()) path = path.parent_path();
  return path;
}

bool same_directory(const std::string& a, const std::string& b) {
  return normalized(a) == normalized(b);
}

bool inside_run_dir(const std::string& run_dir, const std::string& checkpoint_dir) {
  const fs::path run = normalized(run_dir);
  const fs::path checkpoints = normalized(checkpoint_dir);
  const auto mismatch =
      std::mismatch(run.begin(), run.end(), checkpoints.begin(), checkpoints.end());
  return mismatch.first == run.end();
}

void rename_or_throw(const fs::path& from, const fs::path& to) {
  std::error_code error;
  fs::rename(from, to, error);
  if (error) {
    throw UserError(from.string() + ": cannot move it aside to " + to.string() + " (" +
                    error.message() + "); move it yourself or choose another --run-dir");
  }
}

}  // namespace

DirectoryLock::DirectoryLock(const std::string& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    throw UserError(dir + ": cannot create the run directory (" + error.message() +
                    "); choose a directory you can write");
  }
  const std::string path = (fs::path(dir) / kLockFile).string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw WriteError(write_failure_message(path, errno, 0));
  }
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    std::ifstream file(path);
    std::string holder;
    std::getline(file, holder);
    ::close(fd_);
    fd_ = -1;
    throw UserError(dir + ": in use by another training (" +
                    (holder.empty() ? std::string("holder unknown") : holder) +
                    "); wait for it to end, stop it, or choose another --run-dir");
  }
  // Who holds it, for the message of a second run. The lock, not this text, decides.
  std::ostringstream holder;
  holder << "host " << host_name() << ", pid " << ::getpid() << ", since " << utc_stamp() << "\n";
  const std::string text = holder.str();
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, text.data(), text.size(), 0) < 0) {
    throw WriteError(write_failure_message(path, errno, text.size()));
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<std::string> previous_run_files(const std::string& run_dir,
                                            const std::string& checkpoint_dir) {
  std::vector<std::string> found;
  std::error_code error;
  for (const std::string& name : kRunOutputs) {
    const fs::path path = fs::path(run_dir) / name;
    if (!fs::exists(path, error)) continue;
    // Empty directories (a run that stopped before writing) hold nothing to lose.
    if (fs::is_directory(path, error) && fs::is_empty(path, error)) continue;
    found.push_back(name);
  }
  if (!inside_run_dir(run_dir, checkpoint_dir) && fs::is_directory(checkpoint_dir, error)) {
    for (const auto& entry : fs::directory_iterator(checkpoint_dir, error)) {
      if (is_checkpoint_entry(entry.path().filename().string())) {
        found.push_back(entry.path().string());
      }
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::vector<std::string> move_aside(const std::string& run_dir,
                                    const std::vector<std::string>& files) {
  const std::string aside_name = "overwritten-" + utc_stamp();
  std::vector<std::string> destinations;
  for (const std::string& file : files) {
    // Run outputs are named relative to the run directory; outside checkpoints by full path.
    const fs::path source =
        fs::path(file).has_parent_path() ? fs::path(file) : fs::path(run_dir) / file;
    const fs::path aside = source.parent_path() / aside_name;
    std::error_code error;
    fs::create_directories(aside, error);
    if (error) {
      throw UserError(aside.string() + ": cannot create it to move old files aside (" +
                      error.message() + "); choose another --run-dir");
    }
    rename_or_throw(source, aside / source.filename());
    if (std::find(destinations.begin(), destinations.end(), aside.string()) == destinations.end()) {
      destinations.push_back(aside.string());
    }
  }
  return destinations;
}

std::unique_ptr<RunDirectoryClaim> claim_run_directory(const std::string& run_dir,
                                                       const std::string& checkpoint_dir,
                                                       bool resume, bool overwrite) {
  if (resume && overwrite) {
    throw UserError(
        "--resume and --overwrite: choose one (continue the run, or move its files "
        "aside and start fresh)");
  }
  auto claim = std::make_unique<RunDirectoryClaim>();
  claim->locks.push_back(std::make_unique<DirectoryLock>(run_dir));
  if (!same_directory(run_dir, checkpoint_dir) && !inside_run_dir(run_dir, checkpoint_dir)) {
    claim->locks.push_back(std::make_unique<DirectoryLock>(checkpoint_dir));
  }
  const auto previous = previous_run_files(run_dir, checkpoint_dir);
  if (!previous.empty() && !resume) {
    if (!overwrite) {
      throw UserError(run_dir + ": holds a previous run's files (" + previous.front() +
                      (previous.size() > 1 ? " and " + std::to_string(previous.size() - 1) + " more"
                                           : std::string()) +
                      "); continue it with --resume auto, move them aside with --overwrite, or "
                      "choose another --run-dir");
    }
    const auto destinations = move_aside(run_dir, previous);
    std::string where;
    for (const auto& destination : destinations) where += (where.empty() ? "" : ", ") + destination;
    std::cout << "sparsering: --overwrite: the previous run's files moved to " << where
              << std::endl;
  }
  check_writable_directory(run_dir, "the run directory");
  check_writable_directory(checkpoint_dir, "the checkpoint directory");
  return claim;
}

void settle_fresh_start(const std::string& run_dir, const std::string& checkpoint_dir) {
  const auto previous = previous_run_files(run_dir, checkpoint_dir);
  if (previous.empty()) return;
  const auto destinations = move_aside(run_dir, previous);
  std::cout << "sparsering: --resume auto: no checkpoint to continue; the previous run's files "
               "moved to "
            << destinations.front() << ", starting fresh" << std::endl;
}

}  // namespace sparsering::trainer

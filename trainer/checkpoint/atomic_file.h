// Checked writes of the small files a run leaves behind (resolved config, metrics, logs,
// summary.json, `latest`, checkpoint metadata, exports). Every write is checked; a failure is one
// line naming the file and, when the disk is full, the space the write needed and the space left.
// A file that replaces an older one is written to <path>.tmp, fsynced and renamed over it, so a
// crash or a full disk leaves the older file whole.
//
// For the tests, SPARSERING_WRITE_FAULT=<text> makes every checked write to a path containing
// <text> fail as a full disk would (ENOSPC), without needing a small filesystem.
#pragma once

#include <cstdint>
#include <string>

#include "configs/user_error.h"

namespace sparsering::trainer {

// A write that failed: the file, why, and the fix. Out of space is the machine's state, not a
// program error, so it is a UserError (status 2).
class WriteError : public UserError {
 public:
  explicit WriteError(const std::string& message) : UserError(message) {}
};

// The one-line message for a failed write of `bytes` to `path` with errno `error`.
std::string write_failure_message(const std::string& path, int error, uint64_t bytes);

// Replaces `path` with `contents` all or nothing: <path>.tmp, write, fsync, rename, fsync of the
// directory. Throws WriteError; on failure the temporary file is removed and `path` is untouched.
void write_file_atomically(const std::string& path, const std::string& contents);

// Writes `contents` to a new file at `path` (truncating it), checked and fsynced; for files that
// replace nothing (e.g. inside a checkpoint's .tmp directory, renamed as a whole later).
void write_new_file(const std::string& path, const std::string& contents);

// A file that grows line by line (metrics.jsonl, logs/rank_*.log): each append is one write(2)
// of whole lines, checked, so a full disk ends the run with a WriteError instead of cutting lines
// silently.
class AppendFile {
 public:
  AppendFile() = default;
  explicit AppendFile(const std::string& path);
  AppendFile(const AppendFile&) = delete;
  AppendFile& operator=(const AppendFile&) = delete;
  AppendFile(AppendFile&& other) noexcept;
  AppendFile& operator=(AppendFile&& other) noexcept;
  ~AppendFile();

  bool is_open() const { return fd_ >= 0; }
  void append(const std::string& text);

 private:
  std::string path_;
  int fd_ = -1;
};

// Proves `dir` exists (creating it) and takes writes: writes, fsyncs and removes a probe file.
// `what` names the directory's role in the error, e.g. "the run directory".
void check_writable_directory(const std::string& dir, const std::string& what);

}  // namespace sparsering::trainer

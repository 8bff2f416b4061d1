#include "trainer/checkpoint/atomic_file.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>

namespace sparsering::trainer {
namespace {

namespace fs = std::filesystem;

std::string human_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof(text), unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return text;
}

// True when the test hook SPARSERING_WRITE_FAULT names part of `path`.
bool injected_write_fault(const std::string& path) {
  static const char* fault = std::getenv("SPARSERING_WRITE_FAULT");
  return fault != nullptr && *fault != '\0' && path.find(fault) != std::string::npos;
}

// Writes all of `contents` to `fd`; returns 0 or the errno of the failure.
int write_all(int fd, const std::string& path, const std::string& contents) {
  if (injected_write_fault(path)) return ENOSPC;
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t written = ::write(fd, contents.data() + done, contents.size() - done);
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    done += static_cast<size_t>(written);
  }
  return 0;
}

void sync_directory_of(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  const int fd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Creates (truncates) `path` and writes `contents`, fsynced. Returns 0 or the errno.
int write_and_sync(const std::string& path, const std::string& contents) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  int error = write_all(fd, path, contents);
  if (error == 0 && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  return error;
}

}  // namespace

std::string write_failure_message(const std::string& path, int error, uint64_t bytes) {
  if (error == ENOSPC || error == EDQUOT) {
    std::string free_text = "unknown";
    struct statvfs stats;
    const fs::path parent = fs::path(path).parent_path();
    if (::statvfs(parent.empty() ? "." : parent.c_str(), &stats) == 0) {
      free_text = human_bytes(static_cast<uint64_t>(stats.f_bavail) * stats.f_frsize);
    }
    return path + ": no space left on the device (the write needs " + human_bytes(bytes) + ", " +
           free_text + " free); free space there or choose another directory";
  }
  return path + ": cannot write (" + std::strerror(error) + "); check the directory's permissions";
}

void write_file_atomically(const std::string& path, const std::string& contents) {
  const std::string temporary = path + ".tmp";
  const int error = write_and_sync(temporary, contents);
  if (error != 0) {
    ::unlink(temporary.c_str());
    throw WriteError(write_failure_message(path, error, contents.size()));
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    const int rename_error = errno;
    ::unlink(temporary.c_str());
    throw WriteError(write_failure_message(path, rename_error, contents.size()));
  }
  sync_directory_of(path);
}

void write_new_file(const std::string& path, const std::string& contents) {
  const int error = write_and_sync(path, contents);
  if (error != 0) {
    ::unlink(path.c_str());
    throw WriteError(write_failure_message(path, error, contents.size()));
  }
}

AppendFile::AppendFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw WriteError(write_failure_message(path, errno, 0));
}

AppendFile::AppendFile(AppendFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(std::exchange(other.fd_, -1)) {}

AppendFile& AppendFile::operator=(AppendFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

AppendFile::~AppendFile() {
  if (fd_ >= 0) ::close(fd_);
}

void AppendFile::append(const std::string& text) {
  if (fd_ < 0) return;
  const off_t size_before = ::lseek(fd_, 0, SEEK_END);
  const int error = write_all(fd_, path_, text);
  if (error != 0) {
    // A partly written line would be cut: take it back so the file ends with whole lines.
    if (size_before >= 0 && ::ftruncate(fd_, size_before) != 0) {
      // The file is then cut; the error below still reports the cause.
    }
    throw WriteError(write_failure_message(path_, error, text.size()));
  }
}

void check_writable_directory(const std::string& dir, const std::string& what) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    throw WriteError(dir + ": cannot create " + what + " (" + error.message() +
                     "); choose a directory you can write");
  }
  const std::string probe = (fs::path(dir) / ".sparsering-write-probe").string();
  const int write_error = write_and_sync(probe, "probe\n");
  ::unlink(probe.c_str());
  if (write_error != 0) {
    throw WriteError(dir + ": " + what +
                     " is not writable: " + write_failure_message(probe, write_error, 6));
  }
}

}  // namespace sparsering::trainer

// Helpers of the data tests: a temporary directory removed at scope exit, raw file bytes.
#pragma once

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

namespace sparsering::testing {

class ScopedTempDir {
 public:
  ScopedTempDir() {
    static std::atomic<int> counter{0};
    path_ =
        std::filesystem::temp_directory_path() /
        ("sparsering-data-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::create_directories(path_);
  }
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  ~ScopedTempDir() { remove_tree(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  std::string path() const { return path_.string(); }

 private:
  // Not std::filesystem::remove_all: libtorch.so exports its own copy of it, which the dynamic
  // linker picks over libstdc++'s and which crashes (null call) in torch 2.11.
  static void remove_tree(const std::filesystem::path& path) {
    std::error_code ignored;
    for (const auto& entry : std::filesystem::directory_iterator(path, ignored)) {
      if (entry.is_directory(ignored) && !entry.is_symlink(ignored)) {
        remove_tree(entry.path());
      } else {
        std::filesystem::remove(entry.path(), ignored);
      }
    }
    std::filesystem::remove(path, ignored);
  }

  std::filesystem::path path_;
};

inline std::string read_bytes(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

}  // namespace sparsering::testing

#include "trainer/tensorboard/tensorboard_writer.h"

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <system_error>

#include "configs/user_error.h"
#include "trainer/tensorboard/event.pb.h"
#include "trainer/tensorboard/tfrecord.h"

namespace sparsering::tensorboard {
namespace {

namespace fs = std::filesystem;

// TensorBoard checks the prefix "brain.Event:"; version 2 is what TensorFlow has written since
// 2016 and tells readers that the file holds no graph-only events of version 1.
constexpr char kFileVersion[] = "brain.Event:2";

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// TensorFlow's naming, which TensorBoard finds by the "tfevents" part. Two writers started in the
// same second in one directory get different files instead of interleaving records in one.
fs::path new_event_file(const fs::path& dir) {
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(
                           std::chrono::system_clock::now().time_since_epoch())
                           .count();
  const std::string base =
      (dir / ("events.out.tfevents." + std::to_string(seconds) + "." + hostname())).string();
  fs::path path = base;
  for (int suffix = 1; fs::exists(path); ++suffix) path = base + "." + std::to_string(suffix);
  return path;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error) {
    throw UserError(dir + ": cannot create the TensorBoard directory (" + error.message() + ")");
  }
  path_ = new_event_file(dir).string();
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) throw UserError(path_ + ": cannot create the TensorBoard event file");
  proto::Event event;
  event.set_wall_time(unix_seconds());
  event.set_file_version(kFileVersion);
  write_event(event.SerializeAsString());
  flush();
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  proto::Event event;
  event.set_wall_time(unix_seconds());
  event.set_step(step);
  proto::Summary::Value* summary_value = event.mutable_summary()->add_value();
  summary_value->set_tag(tag);
  summary_value->set_simple_value(static_cast<float>(value));
  write_event(event.SerializeAsString());
}

void TensorBoardWriter::flush() {
  out_.flush();
  if (!out_) throw std::runtime_error(path_ + ": writing the TensorBoard event file failed");
}

void TensorBoardWriter::write_event(const std::string& serialized_event) {
  write_tfrecord(out_, serialized_event);
  if (!out_) throw std::runtime_error(path_ + ": writing the TensorBoard event file failed");
}

}  // namespace sparsering::tensorboard

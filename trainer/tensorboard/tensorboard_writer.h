// Scalars for TensorBoard, written natively: an event file of TFRecord-framed Event messages, the
// format TensorBoard reads, without TensorFlow or Python. This header is plain C++ so that
// torch-facing code can use it (the protobuf code stays inside this library, docs/build.md).
#pragma once

#include <cstdint>
#include <fstream>
#include <string>

namespace sparsering::tensorboard {

class TensorBoardWriter {
 public:
  // Creates `dir` if needed and a new file events.out.tfevents.<unix seconds>.<hostname> in it
  // (with a numeric suffix should that name exist already), whose first record announces the file
  // version. Throws UserError naming the path when the directory or file cannot be created.
  explicit TensorBoardWriter(const std::string& dir);
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One point of the curve `tag`. Stored as float: TensorBoard's simple_value is a float.
  void add_scalar(const std::string& tag, double value, int64_t step);

  // Hands what was added so far to the file system, where TensorBoard, which tails event files,
  // picks it up. Throws std::runtime_error when writing failed (disk full, file removed).
  void flush();

  const std::string& path() const { return path_; }

 private:
  void write_event(const std::string& serialized_event);

  std::string path_;
  std::ofstream out_;
};

}  // namespace sparsering::tensorboard

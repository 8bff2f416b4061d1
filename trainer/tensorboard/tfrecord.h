// TFRecord framing, the container of TensorFlow event files: each record is
//   uint64 length | uint32 masked CRC-32C of the length bytes | data | uint32 masked CRC-32C of
//   data
// with integers little-endian (tensorflow/core/lib/io/record_writer.h).
#pragma once

#include <cstdint>
#include <fstream>
#include <ostream>
#include <string>
#include <string_view>

namespace sparsering::tensorboard {

// Appends one record holding `data` to `out`.
void write_tfrecord(std::ostream& out, std::string_view data);

// Reads the records of a TFRecord file in order, checking both CRCs of every record.
class TFRecordReader {
 public:
  explicit TFRecordReader(const std::string& path);

  // The next record's data into `record`; false at the end of the file. Throws std::runtime_error
  // naming the file and the record's offset when a record is truncated or a CRC does not match.
  bool read(std::string* record);

 private:
  [[noreturn]] void fail(const std::string& what) const;

  std::string path_;
  std::ifstream in_;
  uint64_t record_offset_ = 0;  // where the record being read starts
};

}  // namespace sparsering::tensorboard

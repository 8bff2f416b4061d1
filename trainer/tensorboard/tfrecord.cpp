#include "trainer/tensorboard/tfrecord.h"

#include <stdexcept>

#include "trainer/tensorboard/crc32c.h"

namespace sparsering::tensorboard {
namespace {

constexpr size_t kLengthBytes = 8, kCrcBytes = 4;

// Little-endian whatever the host's byte order, as the format prescribes.
template <typename Unsigned>
std::string little_endian(Unsigned value) {
  std::string bytes(sizeof(Unsigned), '\0');
  for (size_t i = 0; i < sizeof(Unsigned); ++i) bytes[i] = static_cast<char>(value >> (8 * i));
  return bytes;
}

template <typename Unsigned>
Unsigned from_little_endian(std::string_view bytes) {
  Unsigned value = 0;
  for (size_t i = 0; i < sizeof(Unsigned); ++i) {
    value |= static_cast<Unsigned>(static_cast<uint8_t>(bytes[i])) << (8 * i);
  }
  return value;
}

}  // namespace

void write_tfrecord(std::ostream& out, std::string_view data) {
  const std::string length = little_endian<uint64_t>(data.size());
  out << length << little_endian<uint32_t>(mask_crc(crc32c(length))) << data
      << little_endian<uint32_t>(mask_crc(crc32c(data)));
}

TFRecordReader::TFRecordReader(const std::string& path) : path_(path), in_(path, std::ios::binary) {
  if (!in_) throw std::runtime_error(path + ": cannot open the TFRecord file for reading");
}

bool TFRecordReader::read(std::string* record) {
  std::string header(kLengthBytes + kCrcBytes, '\0');
  in_.read(header.data(), static_cast<std::streamsize>(header.size()));
  if (in_.gcount() == 0 && in_.eof()) return false;
  if (static_cast<size_t>(in_.gcount()) != header.size()) fail("truncated record header");
  const std::string_view length_bytes(header.data(), kLengthBytes);
  // The length is checked before it is trusted, so a corrupt length never sizes a buffer.
  if (unmask_crc(from_little_endian<uint32_t>(header.substr(kLengthBytes))) !=
      crc32c(length_bytes)) {
    fail("CRC of the length does not match");
  }
  const uint64_t length = from_little_endian<uint64_t>(length_bytes);
  record->assign(length, '\0');
  in_.read(record->data(), static_cast<std::streamsize>(length));
  std::string data_crc(kCrcBytes, '\0');
  in_.read(data_crc.data(), static_cast<std::streamsize>(kCrcBytes));
  if (!in_) fail("truncated record data");
  if (unmask_crc(from_little_endian<uint32_t>(data_crc)) != crc32c(*record)) {
    fail("CRC of the data does not match");
  }
  record_offset_ += header.size() + length + kCrcBytes;
  return true;
}

void TFRecordReader::fail(const std::string& what) const {
  throw std::runtime_error(path_ + ": " + what + " in the record at byte " +
                           std::to_string(record_offset_));
}

}  // namespace sparsering::tensorboard

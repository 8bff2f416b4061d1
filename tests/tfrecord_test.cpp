// CRC-32C and TFRecord framing of the TensorBoard library, checked against published values.
#include "trainer/tensorboard/tfrecord.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

#include "trainer/tensorboard/crc32c.h"

namespace sparsering::tensorboard {
namespace {

namespace fs = std::filesystem;

// Check values of RFC 3720 (iSCSI), appendix B.4, and the common "123456789" check value.
TEST(TensorBoardCrc32c, MatchesPublishedCheckValues) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending(32, '\0');
  for (int i = 0; i < 32; ++i) ascending[i] = static_cast<char>(i);
  EXPECT_EQ(crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(crc32c(""), 0u);
}

TEST(TensorBoardCrc32c, MaskRoundTripsAndChangesTheValue) {
  for (const uint32_t crc : {0u, 1u, 0xE3069283u, 0xFFFFFFFFu}) {
    EXPECT_EQ(unmask_crc(mask_crc(crc)), crc);
    EXPECT_NE(mask_crc(crc), crc);
  }
  // TensorFlow's Mask: rotate right by 15 bits, add 0xa282ead8.
  EXPECT_EQ(mask_crc(0x00008000u), 0x00000001u + 0xA282EAD8u);
}

class TensorBoardTfRecord : public testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/tfrecord_test_XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    path_ = (dir_ / "records").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  void write_file(const std::string& bytes) { std::ofstream(path_, std::ios::binary) << bytes; }

  fs::path dir_;
  std::string path_;
};

TEST_F(TensorBoardTfRecord, FramesDataAsTensorFlowDoes) {
  std::ostringstream out;
  write_tfrecord(out, "abc");
  const std::string bytes = out.str();
  ASSERT_EQ(bytes.size(), 8u + 4u + 3u + 4u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x03\0\0\0\0\0\0\0", 8));  // little-endian length
  const uint32_t length_crc = mask_crc(crc32c(bytes.substr(0, 8)));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(static_cast<uint8_t>(bytes[8 + i]), (length_crc >> (8 * i)) & 0xFFu);
  }
  EXPECT_EQ(bytes.substr(12, 3), "abc");
  const uint32_t data_crc = mask_crc(crc32c("abc"));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(static_cast<uint8_t>(bytes[15 + i]), (data_crc >> (8 * i)) & 0xFFu);
  }
}

TEST_F(TensorBoardTfRecord, ReadsBackWhatWasWritten) {
  std::ostringstream out;
  const std::string records[] = {"first", "", std::string(1000, 'x'), std::string("\0\1\2", 3)};
  for (const auto& record : records) write_tfrecord(out, record);
  write_file(out.str());
  TFRecordReader reader(path_);
  std::string record;
  for (const auto& expected : records) {
    ASSERT_TRUE(reader.read(&record));
    EXPECT_EQ(record, expected);
  }
  EXPECT_FALSE(reader.read(&record));
}

TEST_F(TensorBoardTfRecord, RejectsACorruptDataByte) {
  std::ostringstream out;
  write_tfrecord(out, "payload");
  std::string bytes = out.str();
  bytes[12] ^= 0x01;
  write_file(bytes);
  TFRecordReader reader(path_);
  std::string record;
  try {
    reader.read(&record);
    FAIL() << "a flipped data bit was not detected";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("CRC of the data"), std::string::npos) << error.what();
  }
}

TEST_F(TensorBoardTfRecord, RejectsACorruptLength) {
  std::ostringstream out;
  write_tfrecord(out, "payload");
  std::string bytes = out.str();
  bytes[0] ^= 0x40;
  write_file(bytes);
  TFRecordReader reader(path_);
  std::string record;
  try {
    reader.read(&record);
    FAIL() << "a flipped length bit was not detected";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("CRC of the length"), std::string::npos)
        << error.what();
  }
}

TEST_F(TensorBoardTfRecord, RejectsATruncatedRecordAndNamesItsOffset) {
  std::ostringstream out;
  write_tfrecord(out, "whole");
  write_tfrecord(out, "cut short");
  const std::string bytes = out.str();
  write_file(bytes.substr(0, bytes.size() - 2));
  TFRecordReader reader(path_);
  std::string record;
  ASSERT_TRUE(reader.read(&record));
  try {
    reader.read(&record);
    FAIL() << "a truncated record was not detected";
  } catch (const std::runtime_error& error) {
    EXPECT_NE(std::string(error.what()).find("truncated record data in the record at byte 21"),
              std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace sparsering::tensorboard

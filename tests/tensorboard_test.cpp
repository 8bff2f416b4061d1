// TensorBoardWriter: the event file it writes, read back through our TFRecord reader (both CRCs
// checked) and parsed as Event messages whose field numbers are TensorFlow's. This binary does not
// see torch's include paths, so the generated protobuf code compiles (docs/build.md).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "configs/user_error.h"
#include "trainer/tensorboard/event.pb.h"
#include "trainer/tensorboard/tensorboard_writer.h"
#include "trainer/tensorboard/tfrecord.h"

namespace sparsering::tensorboard {
namespace {

namespace fs = std::filesystem;

std::vector<proto::Event> read_events(const std::string& path) {
  std::vector<proto::Event> events;
  TFRecordReader reader(path);
  std::string record;
  while (reader.read(&record)) {
    proto::Event event;
    EXPECT_TRUE(event.ParseFromString(record)) << "record " << events.size();
    events.push_back(event);
  }
  return events;
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class TensorBoardWriterTest : public testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/tensorboard_test_XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path dir_;
};

TEST_F(TensorBoardWriterTest, WritesFileVersionThenScalars) {
  const double before = unix_seconds();
  std::string path;
  {
    TensorBoardWriter writer((dir_ / "runs" / "tb").string());
    path = writer.path();
    writer.add_scalar("train/loss", 2.5, 1);
    writer.add_scalar("train/lr", 3e-4, 1);
    writer.add_scalar("train/loss", 1.25, 2);
    writer.flush();
  }
  const double after = unix_seconds();
  const auto events = read_events(path);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].file_version(), "brain.Event:2");
  EXPECT_FALSE(events[0].has_summary());
  struct Expected {
    const char* tag;
    float value;
    int64_t step;
  };
  const Expected expected[] = {
      {"train/loss", 2.5f, 1}, {"train/lr", 3e-4f, 1}, {"train/loss", 1.25f, 2}};
  for (int i = 0; i < 3; ++i) {
    const proto::Event& event = events[i + 1];
    EXPECT_EQ(event.step(), expected[i].step);
    // Whole seconds: the clock read inside the writer may round either way at the edges.
    EXPECT_GE(event.wall_time(), std::floor(before));
    EXPECT_LE(event.wall_time(), std::ceil(after));
    ASSERT_TRUE(event.has_summary());
    ASSERT_EQ(event.summary().value_size(), 1);
    EXPECT_EQ(event.summary().value(0).tag(), expected[i].tag);
    ASSERT_EQ(event.summary().value(0).value_case(), proto::Summary::Value::kSimpleValue);
    EXPECT_EQ(event.summary().value(0).simple_value(), expected[i].value);
  }
}

// The bytes TensorFlow's own schema gives for Event{step: 7, summary {value {tag: "a",
// simple_value: 1.0}}}, worked out by hand from event.proto and summary.proto: step is field 2
// (varint), summary field 5, Summary.value field 1, Value.tag field 1, Value.simple_value field 2
// (fixed32). A field number changed in our schema changes these bytes.
TEST_F(TensorBoardWriterTest, EncodesTensorFlowFieldNumbers) {
  proto::Event event;
  event.set_step(7);
  proto::Summary::Value* value = event.mutable_summary()->add_value();
  value->set_tag("a");
  value->set_simple_value(1.0f);
  const std::string expected(
      "\x10\x07"  // step = 7
      "\x2a\x0a"  // summary, 10 bytes
      "\x0a\x08"  // value, 8 bytes
      "\x0a\x01"
      "a"                      // tag = "a"
      "\x15\x00\x00\x80\x3f",  // simple_value = 1.0f
      14);
  EXPECT_EQ(event.SerializeAsString(), expected);

  proto::Event version;
  version.set_wall_time(0.5);
  version.set_file_version("v");
  EXPECT_EQ(version.SerializeAsString(),
            std::string("\x09\x00\x00\x00\x00\x00\x00\xe0\x3f"  // wall_time = 0.5 (fixed64)
                        "\x1a\x01v",                            // file_version = "v"
                        12));
}

TEST_F(TensorBoardWriterTest, NamesTheFileAsTensorFlowDoes) {
  const auto before = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  TensorBoardWriter writer(dir_.string());
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  const fs::path path = writer.path();
  EXPECT_EQ(path.parent_path(), dir_);
  std::smatch match;
  const std::string name = path.filename().string();
  ASSERT_TRUE(std::regex_match(name, match, std::regex(R"(events\.out\.tfevents\.(\d+)\.(.+))")))
      << name;
  EXPECT_GE(std::stoll(match[1]), before);
  EXPECT_LE(std::stoll(match[1]), before + 60);
  EXPECT_EQ(match[2], std::string(host));
}

TEST_F(TensorBoardWriterTest, WritersStartedTogetherGetTheirOwnFiles) {
  TensorBoardWriter first(dir_.string());
  TensorBoardWriter second(dir_.string());
  ASSERT_NE(first.path(), second.path());
  first.add_scalar("x", 1, 1);
  second.add_scalar("x", 2, 1);
  first.flush();
  second.flush();
  EXPECT_EQ(read_events(first.path()).back().summary().value(0).simple_value(), 1.0f);
  EXPECT_EQ(read_events(second.path()).back().summary().value(0).simple_value(), 2.0f);
}

TEST_F(TensorBoardWriterTest, UnusableDirectoryIsAUserError) {
  const fs::path file = dir_ / "a_file";
  std::ofstream(file) << "not a directory";
  try {
    TensorBoardWriter writer((file / "tb").string());
    FAIL() << "a directory under a regular file was accepted";
  } catch (const UserError& error) {
    EXPECT_NE(std::string(error.what()).find((file / "tb").string()), std::string::npos)
        << error.what();
  }
}

}  // namespace
}  // namespace sparsering::tensorboard

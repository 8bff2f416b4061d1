// Token shard files: what is written reads back, the bytes match the documented layout (and
// launch/prepare_data.py, tests/e2e/prepare_data.py), and damaged or foreign files are refused
// with a one-line UserError naming the file and the problem.
#include "data/token_shard.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "configs/user_error.h"
#include "tests/data_test_util.h"

namespace sparsering {
namespace {

using data::TokenDType;
using data::TokenShard;
using testing::ScopedTempDir;

// Documents {1, 2}, {3} as uint16 with vocabulary 10, byte by byte; the same bytes are checked
// against launch/prepare_data.py's writer in tests/e2e/prepare_data.py.
const std::string kGoldenShard = std::string(
    "SRTOKENS"
    "\x01\x00\x00\x00"                  // version 1
    "\x02\x00\x00\x00"                  // 2 bytes per token
    "\x03\x00\x00\x00\x00\x00\x00\x00"  // 3 tokens
    "\x02\x00\x00\x00\x00\x00\x00\x00"  // 2 documents
    "\x0a\x00\x00\x00\x00\x00\x00\x00"  // vocabulary 10
    "\x01\x00\x02\x00\x03\x00"          // tokens
    "\x00\x00"                          // padding to 8 bytes
    "\x00\x00\x00\x00\x00\x00\x00\x00"  // document starts 0, 2, 3
    "\x02\x00\x00\x00\x00\x00\x00\x00"
    "\x03\x00\x00\x00\x00\x00\x00\x00",
    72);

std::string error_opening(const std::string& path) {
  try {
    TokenShard shard(path);
  } catch (const UserError& error) {
    return error.what();
  }
  return "";
}

void expect_refused(const std::string& path, const std::string& phrase) {
  const std::string message = error_opening(path);
  ASSERT_FALSE(message.empty()) << path << " was accepted";
  EXPECT_NE(message.find(path), std::string::npos) << message;
  EXPECT_NE(message.find(phrase), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

void round_trip(TokenDType dtype, uint64_t vocab_size) {
  const ScopedTempDir dir;
  const std::vector<std::vector<uint32_t>> documents = {
      {0, 1, 2}, {}, {static_cast<uint32_t>(vocab_size - 1)}, {7, 7, 7, 7, 5}};
  const std::string path = dir.file("a.srtok");
  data::write_token_shard(path, documents, dtype, vocab_size);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  const TokenShard shard(path);
  EXPECT_EQ(shard.dtype(), dtype);
  EXPECT_EQ(shard.vocab_size(), vocab_size);
  EXPECT_EQ(shard.document_count(), documents.size());
  EXPECT_EQ(shard.token_count(), 9u);
  EXPECT_EQ(std::filesystem::file_size(path), data::token_shard_file_bytes(dtype, 9, 4));
  uint64_t position = 0;
  for (size_t d = 0; d < documents.size(); ++d) {
    EXPECT_EQ(shard.document_start(d), position);
    for (const uint32_t token : documents[d]) {
      EXPECT_EQ(shard.token(position), token);
      EXPECT_EQ(shard.document_of(position), d) << "position " << position;
      ++position;
    }
  }
  EXPECT_EQ(shard.document_start(documents.size()), position);
  std::vector<int32_t> copied(4);
  shard.copy_tokens(3, 7, copied.data());
  EXPECT_EQ(copied, (std::vector<int32_t>{static_cast<int32_t>(vocab_size - 1), 7, 7, 7}));
}

TEST(TokenShard, RoundTripUint16) { round_trip(TokenDType::kUint16, 65536); }

TEST(TokenShard, RoundTripUint32) { round_trip(TokenDType::kUint32, 151936); }

TEST(TokenShard, DTypeFollowsTheVocabulary) {
  EXPECT_EQ(data::token_dtype_for_vocab(65536), TokenDType::kUint16);
  EXPECT_EQ(data::token_dtype_for_vocab(65537), TokenDType::kUint32);
}

TEST(TokenShard, BytesMatchTheDocumentedLayout) {
  const ScopedTempDir dir;
  data::write_token_shard(dir.file("golden.srtok"), {{1, 2}, {3}}, TokenDType::kUint16, 10);
  EXPECT_EQ(testing::read_bytes(dir.file("golden.srtok")), kGoldenShard);
}

TEST(TokenShard, WriterRejectsTokensOutsideTheVocabulary) {
  const ScopedTempDir dir;
  EXPECT_THROW(data::write_token_shard(dir.file("x.srtok"), {{10}}, TokenDType::kUint16, 10),
               std::invalid_argument);
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.srtok")));
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.srtok.tmp")));  // the writer cleaned up
  EXPECT_THROW(data::TokenShardWriter(dir.file("y.srtok"), TokenDType::kUint16, 70000),
               std::invalid_argument);
}

TEST(TokenShard, CorruptMagicIsRefused) {
  const ScopedTempDir dir;
  std::string bytes = kGoldenShard;
  bytes[0] = 'X';
  testing::write_bytes(dir.file("bad.srtok"), bytes);
  expect_refused(dir.file("bad.srtok"), "SRTOKENS");
  testing::write_bytes(dir.file("text.srtok"), std::string(100, 'a'));
  expect_refused(dir.file("text.srtok"), "not a SparseRing token shard");
}

TEST(TokenShard, TruncatedFilesAreRefused) {
  const ScopedTempDir dir;
  testing::write_bytes(dir.file("short.srtok"), kGoldenShard.substr(0, kGoldenShard.size() - 1));
  expect_refused(dir.file("short.srtok"), "truncated");
  testing::write_bytes(dir.file("header.srtok"), kGoldenShard.substr(0, 20));
  expect_refused(dir.file("header.srtok"), "truncated");
  testing::write_bytes(dir.file("empty.srtok"), "");
  expect_refused(dir.file("empty.srtok"), "truncated");
  testing::write_bytes(dir.file("long.srtok"), kGoldenShard + "extra");
  expect_refused(dir.file("long.srtok"), "its header (3 tokens, 2 documents) needs 72");
}

TEST(TokenShard, WrongDTypeIsRefused) {
  const ScopedTempDir dir;
  std::string bytes = kGoldenShard;
  bytes[12] = 3;  // 3 bytes per token
  testing::write_bytes(dir.file("dtype.srtok"), bytes);
  expect_refused(dir.file("dtype.srtok"), "unknown token type");
  bytes = kGoldenShard;
  bytes[12] = 4;  // uint32 tokens: the header then needs a larger file
  testing::write_bytes(dir.file("size.srtok"), bytes);
  expect_refused(dir.file("size.srtok"), "truncated");
}

TEST(TokenShard, WrongVersionIsRefused) {
  const ScopedTempDir dir;
  std::string bytes = kGoldenShard;
  bytes[8] = 2;
  testing::write_bytes(dir.file("v2.srtok"), bytes);
  expect_refused(dir.file("v2.srtok"), "format version 2");
}

TEST(TokenShard, CorruptDocumentIndexIsRefused) {
  const ScopedTempDir dir;
  std::string bytes = kGoldenShard;
  bytes[56] = 5;  // second document start beyond the token count
  testing::write_bytes(dir.file("index.srtok"), bytes);
  expect_refused(dir.file("index.srtok"), "document index");
  bytes = kGoldenShard;
  bytes[32] = 0;  // vocabulary 0
  testing::write_bytes(dir.file("vocab.srtok"), bytes);
  expect_refused(dir.file("vocab.srtok"), "vocabulary size 0");
}

TEST(TokenShard, MissingFileIsAUserError) { expect_refused("/nonexistent/a.srtok", "cannot open"); }

TEST(TokenShard, DirectoryListsShardsByName) {
  const ScopedTempDir dir;
  for (const char* name : {"b.srtok", "a.srtok", "c.srtok"}) {
    data::write_token_shard(dir.file(name), {{1}}, TokenDType::kUint16, 2);
  }
  testing::write_bytes(dir.file("notes.txt"), "not a shard");
  EXPECT_EQ(
      data::list_token_shards(dir.path()),
      (std::vector<std::string>{dir.file("a.srtok"), dir.file("b.srtok"), dir.file("c.srtok")}));
  EXPECT_EQ(data::list_token_shards(dir.file("b.srtok")),
            std::vector<std::string>{dir.file("b.srtok")});
}

TEST(TokenShard, EmptyOrMissingDirectoryIsAUserError) {
  const ScopedTempDir dir;
  EXPECT_THROW(data::list_token_shards(dir.path()), UserError);
  EXPECT_THROW(data::list_token_shards(dir.file("missing")), UserError);
}

}  // namespace
}  // namespace sparsering

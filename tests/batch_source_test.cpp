// The trainer's data entry point: make_sequence_source builds the source a resolved config names,
// each source serves what its generator or dataset serves, and the config rules for the data
// sources agree with the limits of data/synthetic.h.
#include "data/batch_source.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "configs/config.h"
#include "configs/user_error.h"
#include "data/synthetic.h"
#include "data/token_dataset.h"
#include "tests/data_test_util.h"

namespace sparsering {
namespace {

using testing::ScopedTempDir;

config::Experiment tiny(const std::vector<std::string>& overrides) {
  return config::load_experiment(config::embedded_tiny_config(), "test.pbtxt", overrides);
}

std::string config_error(const std::vector<std::string>& overrides) {
  try {
    tiny(overrides);
  } catch (const UserError& error) {
    return error.what();
  }
  return "";
}

std::string source_error(const config::DataConfig& data, int64_t length, int64_t vocab) {
  try {
    data::make_sequence_source(data, length, vocab, 1);
  } catch (const UserError& error) {
    return error.what();
  }
  return "";
}

TEST(SequenceSource, CopyServesTheCopyTask) {
  const auto e = tiny({});
  const auto source = data::make_sequence_source(e.data, 256, 64, 1234);
  EXPECT_EQ(source->sequences_per_epoch(), 0u);
  for (uint64_t index : {0, 1, 77}) {
    EXPECT_EQ(source->sequence(index),
              data::copy_task_sequence(1234, static_cast<int64_t>(index), 256, 64, 32));
    const auto example = source->example(index);
    EXPECT_EQ(example.tokens, source->sequence(index));
    EXPECT_TRUE(example.answer_positions.empty());
    EXPECT_TRUE(example.document_ids.empty());
  }
}

TEST(SequenceSource, PasskeyServesItsExamplesWithAnswerPositions) {
  const auto e = tiny({"data.source=PASSKEY", "data.passkey_digits=7", "data.needle_depth=0.3"});
  const auto source = data::make_sequence_source(e.data, 512, 64, 5);
  for (uint64_t index : {0, 9}) {
    const auto expected = data::passkey_example(5, index, 512, 64, 7, 0.3);
    const auto example = source->example(index);
    EXPECT_EQ(example.tokens, expected.tokens);
    EXPECT_EQ(source->sequence(index), expected.tokens);
    EXPECT_EQ(example.answer_positions, expected.answer_positions);
    EXPECT_EQ(example.answer_positions.size(), 7u);
  }
  EXPECT_NE(source->description().find("passkey"), std::string::npos);
}

TEST(SequenceSource, AssociativeRecallServesItsExamplesWithAnswerPositions) {
  const auto e =
      tiny({"data.source=ASSOCIATIVE_RECALL", "data.recall_pairs=20", "data.recall_queries=3"});
  const auto source = data::make_sequence_source(e.data, 256, 64, 5);
  const auto expected = data::associative_recall_example(5, 4, 256, 64, 20, 3);
  const auto example = source->example(4);
  EXPECT_EQ(example.tokens, expected.tokens);
  EXPECT_EQ(source->sequence(4), expected.tokens);
  EXPECT_EQ(example.answer_positions, expected.answer_positions);
}

TEST(SequenceSource, TokenShardsServeThePackedSequences) {
  const ScopedTempDir dir;
  std::vector<std::vector<uint32_t>> documents;
  for (uint32_t d = 0; d < 40; ++d) documents.push_back(std::vector<uint32_t>(30 + d, d % 50));
  data::write_token_shard(dir.file("0.srtok"), documents, data::TokenDType::kUint16, 50);
  const auto e = tiny({"data.source=TOKEN_SHARDS", "data.path=" + dir.path()});
  EXPECT_TRUE(e.data.shuffle);
  const auto source = data::make_sequence_source(e.data, 256, 64, 11);
  const auto dataset = data::TokenDataset::open(dir.path(), 256, 11, true);
  EXPECT_EQ(source->sequences_per_epoch(), dataset.num_sequences());
  EXPECT_EQ(source->sequences_per_epoch(), (40 * 30 + 39 * 40 / 2) / 256u);
  for (uint64_t index = 0; index < 2 * dataset.num_sequences(); ++index) {
    const auto example = source->example(index);
    const auto packed = dataset.sequence_with_documents(index);
    EXPECT_EQ(example.tokens, packed.tokens);
    EXPECT_EQ(example.document_ids, packed.document_ids);
    EXPECT_EQ(source->sequence(index), packed.tokens);
  }
}

TEST(SequenceSource, ShardVocabularyBeyondTheModelIsRefused) {
  const ScopedTempDir dir;
  data::write_token_shard(dir.file("0.srtok"), {std::vector<uint32_t>(600, 3)},
                          data::TokenDType::kUint16, 1000);
  const auto e = tiny({"data.source=TOKEN_SHARDS", "data.path=" + dir.path()});
  const std::string message = source_error(e.data, 256, 64);
  EXPECT_NE(message.find("0.srtok"), std::string::npos) << message;
  EXPECT_NE(message.find("raise model.vocab_size to at least 1000"), std::string::npos) << message;
  EXPECT_TRUE(source_error(e.data, 256, 1000).empty());
}

TEST(SequenceSource, EmptyShardDirectoryIsRefused) {
  const ScopedTempDir dir;
  const auto e = tiny({"data.source=TOKEN_SHARDS", "data.path=" + dir.path()});
  EXPECT_NE(source_error(e.data, 256, 64).find("no *.srtok"), std::string::npos);
}

TEST(SequenceSource, TooSmallVocabularyOrLengthIsRefused) {
  auto data = tiny({"data.source=PASSKEY"}).data;
  EXPECT_NE(source_error(data, 256, 32).find("model.vocab_size = 32"), std::string::npos);
  EXPECT_NE(source_error(data, 21, 64).find("needs at least 22 tokens"), std::string::npos);
  data = tiny({"data.source=ASSOCIATIVE_RECALL"}).data;
  EXPECT_NE(source_error(data, 256, 48).find("model.vocab_size = 48"), std::string::npos);
}

TEST(DataConfig, FieldsReachTheStruct) {
  const auto e =
      tiny({"data.source=ASSOCIATIVE_RECALL", "data.recall_pairs=9", "data.recall_queries=4",
            "data.shuffle=false", "data.passkey_digits=3", "data.needle_depth=0.5"});
  EXPECT_EQ(e.data.source, config::DataSource::kAssociativeRecall);
  EXPECT_EQ(e.data.recall_pairs, 9);
  EXPECT_EQ(e.data.recall_queries, 4);
  EXPECT_FALSE(e.data.shuffle);
  EXPECT_EQ(e.data.passkey_digits, 3);
  EXPECT_EQ(e.data.needle_depth, 0.5);
  const auto defaults = tiny({});
  EXPECT_TRUE(defaults.data.shuffle);
  EXPECT_EQ(defaults.data.passkey_digits, 5);
  EXPECT_LT(defaults.data.needle_depth, 0);
  EXPECT_EQ(defaults.data.recall_pairs, 16);
  EXPECT_EQ(defaults.data.recall_queries, 8);
}

// Config validation repeats the task limits (configs depend on nothing of ours): both must agree.
TEST(DataConfig, VocabularyRulesMatchTheTasks) {
  const auto vocab = [](int64_t size) { return "model.vocab_size=" + std::to_string(size); };
  const int64_t passkey = data::passkey_min_vocab_size();
  EXPECT_EQ(config_error({"data.source=PASSKEY", vocab(passkey)}), "");
  EXPECT_NE(config_error({"data.source=PASSKEY", vocab(passkey - 1)}).find("model.vocab_size"),
            std::string::npos);
  for (int pairs : {1, 16, 40}) {
    const int64_t recall = data::associative_recall_min_vocab_size(pairs);
    const std::string pairs_text = "data.recall_pairs=" + std::to_string(pairs);
    EXPECT_EQ(config_error({"data.source=ASSOCIATIVE_RECALL", pairs_text, "data.recall_queries=1",
                            vocab(recall)}),
              "");
    EXPECT_NE(config_error({"data.source=ASSOCIATIVE_RECALL", pairs_text, "data.recall_queries=1",
                            vocab(recall - 1)})
                  .find("model.vocab_size"),
              std::string::npos);
  }
}

TEST(DataConfig, LengthRulesMatchTheTasks) {
  // At 256 tokens recall fits exactly at 2 x (100 + 28) tokens.
  const std::string length = "train.sequence_length=256";
  EXPECT_EQ(config_error({"data.source=PASSKEY", "data.passkey_digits=18"}), "");
  ASSERT_EQ(data::associative_recall_min_length(100, 28), 256);
  EXPECT_EQ(config_error({length, "data.source=ASSOCIATIVE_RECALL", "data.recall_pairs=100",
                          "data.recall_queries=28", "model.vocab_size=217"}),
            "");
  EXPECT_NE(config_error({length, "data.source=ASSOCIATIVE_RECALL", "data.recall_pairs=100",
                          "data.recall_queries=29", "model.vocab_size=217"})
                .find("train.sequence_length >= 2 x (recall_pairs + recall_queries)"),
            std::string::npos);
}

TEST(DataConfig, BadDataFieldsAreRefused) {
  struct Rule {
    std::vector<std::string> overrides;
    std::string field, phrase;
  };
  const std::vector<Rule> rules = {
      {{"data.source=TOKEN_SHARDS"}, "data.path", "does not exist"},
      {{"data.source=TOKEN_SHARDS", "data.path=/nonexistent/shards"},
       "data.path",
       "/nonexistent/shards"},
      {{"data.source=PASSKEY", "data.passkey_digits=0"}, "data.passkey_digits", "[1, 18]"},
      {{"data.source=PASSKEY", "data.passkey_digits=19"}, "data.passkey_digits", "[1, 18]"},
      {{"data.source=PASSKEY", "data.needle_depth=1.5"}, "data.needle_depth", "[0, 1]"},
      {{"data.source=ASSOCIATIVE_RECALL", "data.recall_pairs=0"}, "data.recall_pairs", ">= 1"},
      {{"data.source=ASSOCIATIVE_RECALL", "data.recall_queries=17"},
       "data.recall_queries",
       "[1, data.recall_pairs]"},
      {{"data.copy_period=0"}, "data.copy_period", "[1, train.sequence_length)"},
  };
  for (const Rule& rule : rules) {
    const std::string message = config_error(rule.overrides);
    EXPECT_NE(message.find(rule.field), std::string::npos)
        << rule.overrides.back() << ": " << message;
    EXPECT_NE(message.find(rule.phrase), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  // The copy period only matters to the copy task.
  EXPECT_EQ(config_error({"data.source=PASSKEY", "data.copy_period=0"}), "");
}

}  // namespace
}  // namespace sparsering

#include "data/batch_source.h"

#include <functional>
#include <string>
#include <utility>

#include "configs/user_error.h"
#include "data/synthetic.h"
#include "data/token_dataset.h"

namespace sparsering::data {
namespace {

class CopyTaskSource : public SequenceSource {
 public:
  CopyTaskSource(int64_t length, int64_t vocab_size, int64_t period, uint64_t seed)
      : length_(length), vocab_size_(vocab_size), period_(period), seed_(seed) {}
  std::vector<int32_t> sequence(uint64_t index) override {
    return copy_task_sequence(seed_, static_cast<int64_t>(index), length_, vocab_size_, period_);
  }
  SequenceExample example(uint64_t index) override { return {sequence(index), {}, {}}; }
  uint64_t sequences_per_epoch() const override { return 0; }
  std::string description() const override {
    return "synthetic copy task, period " + std::to_string(period_) + " tokens";
  }

 private:
  int64_t length_, vocab_size_, period_;
  uint64_t seed_;
};

// A synthetic long-context task (passkey, associative recall): answers are its loss targets.
class TaskSource : public SequenceSource {
 public:
  using Generator = std::function<LongContextExample(uint64_t index)>;
  TaskSource(Generator generate, std::string description)
      : generate_(std::move(generate)), description_(std::move(description)) {}
  std::vector<int32_t> sequence(uint64_t index) override { return generate_(index).tokens; }
  SequenceExample example(uint64_t index) override {
    LongContextExample generated = generate_(index);
    return {std::move(generated.tokens), {}, std::move(generated.answer_positions)};
  }
  uint64_t sequences_per_epoch() const override { return 0; }
  std::string description() const override { return description_; }

 private:
  Generator generate_;
  std::string description_;
};

class TokenShardSource : public SequenceSource {
 public:
  TokenShardSource(TokenDataset dataset, std::string path)
      : dataset_(std::move(dataset)), path_(std::move(path)) {}
  std::vector<int32_t> sequence(uint64_t index) override { return dataset_.sequence(index); }
  SequenceExample example(uint64_t index) override {
    PackedSequence packed = dataset_.sequence_with_documents(index);
    return {std::move(packed.tokens), std::move(packed.document_ids), {}};
  }
  uint64_t sequences_per_epoch() const override { return dataset_.num_sequences(); }
  std::string description() const override {
    return "token shards " + path_ + ": " + std::to_string(dataset_.shards().size()) + " files, " +
           std::to_string(dataset_.num_tokens()) + " tokens, " +
           std::to_string(dataset_.num_sequences()) + " sequences per epoch";
  }

 private:
  TokenDataset dataset_;
  std::string path_;
};

// The synthetic tasks' limits, checked here too because eval may ask for other lengths than the
// validated train.sequence_length.
void require(bool ok, const std::string& message) {
  if (!ok) throw UserError(message);
}

}  // namespace

std::unique_ptr<SequenceSource> make_sequence_source(const config::DataConfig& data,
                                                     int64_t sequence_length, int64_t vocab_size,
                                                     uint64_t seed) {
  const std::string length_text = std::to_string(sequence_length);
  const std::string vocab_text = std::to_string(vocab_size);
  switch (data.source) {
    case config::DataSource::kSyntheticCopy:
      require(data.copy_period >= 1 && data.copy_period < sequence_length,
              "data.copy_period = " + std::to_string(data.copy_period) +
                  ": must be in [1, sequence length " + length_text + ")");
      return std::make_unique<CopyTaskSource>(sequence_length, vocab_size, data.copy_period, seed);
    case config::DataSource::kPasskey: {
      require(
          data.passkey_digits >= 1 && data.passkey_digits <= 18,
          "data.passkey_digits = " + std::to_string(data.passkey_digits) + ": must be in [1, 18]");
      require(sequence_length >= passkey_min_length(data.passkey_digits),
              "sequence length " + length_text + ": passkey with data.passkey_digits = " +
                  std::to_string(data.passkey_digits) + " needs at least " +
                  std::to_string(passkey_min_length(data.passkey_digits)) + " tokens");
      require(vocab_size >= passkey_min_vocab_size(),
              "model.vocab_size = " + vocab_text + ": the passkey task needs at least " +
                  std::to_string(passkey_min_vocab_size()) + " tokens");
      require(data.needle_depth <= 1, "data.needle_depth = " + std::to_string(data.needle_depth) +
                                          ": must be in [0, 1], or < 0 for random");
      const int digits = data.passkey_digits;
      const double depth = data.needle_depth;
      return std::make_unique<TaskSource>(
          [=](uint64_t index) {
            return passkey_example(seed, index, sequence_length, vocab_size, digits, depth);
          },
          "passkey retrieval, " + std::to_string(digits) + " digits, needle depth " +
              (depth < 0 ? std::string("random") : std::to_string(depth)));
    }
    case config::DataSource::kAssociativeRecall: {
      const int pairs = data.recall_pairs, queries = data.recall_queries;
      require(pairs >= 1 && queries >= 1 && queries <= pairs,
              "data.recall_queries = " + std::to_string(queries) +
                  ": need data.recall_pairs >= 1 and 1 <= data.recall_queries <= recall_pairs");
      require(sequence_length >= associative_recall_min_length(pairs, queries),
              "sequence length " + length_text + ": associative recall needs at least 2 x " +
                  "(data.recall_pairs + data.recall_queries) = " +
                  std::to_string(associative_recall_min_length(pairs, queries)) + " tokens");
      require(vocab_size >= associative_recall_min_vocab_size(pairs),
              "model.vocab_size = " + vocab_text + ": associative recall with " +
                  std::to_string(pairs) + " data.recall_pairs needs at least " +
                  std::to_string(associative_recall_min_vocab_size(pairs)) + " tokens");
      return std::make_unique<TaskSource>(
          [=](uint64_t index) {
            return associative_recall_example(seed, index, sequence_length, vocab_size, pairs,
                                              queries);
          },
          "associative recall, " + std::to_string(pairs) + " pairs, " + std::to_string(queries) +
              " queries");
    }
    case config::DataSource::kTokenShards: {
      require(!data.path.empty(), "data.path is empty: set it to a directory of *.srtok shards");
      TokenDataset dataset = TokenDataset::open(data.path, sequence_length, seed, data.shuffle);
      for (const TokenShard& shard : dataset.shards()) {
        require(shard.vocab_size() <= static_cast<uint64_t>(vocab_size),
                shard.path() + ": tokenizer vocabulary of " + std::to_string(shard.vocab_size()) +
                    " tokens exceeds model.vocab_size = " + vocab_text +
                    "; raise model.vocab_size to at least " + std::to_string(shard.vocab_size()));
      }
      return std::make_unique<TokenShardSource>(std::move(dataset), data.path);
    }
  }
  throw std::logic_error("make_sequence_source: unknown data source");
}

}  // namespace sparsering::data

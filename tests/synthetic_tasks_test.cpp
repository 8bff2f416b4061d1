// Synthetic long-context tasks: the answers a generator reports really are in the sequence, are
// the right ones (derivable from the context by the task's rule), sit where it says, and the
// examples depend only on (seed, index).
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

#include "data/synthetic.h"

namespace sparsering {
namespace {

namespace t = data::task_tokens;
using data::LongContextExample;

// Reads the number after the needle's "the key is" by the task's own rule: the digits that
// follow the first kThe kKey kIs.
std::vector<int32_t> digits_after_first_needle(const std::vector<int32_t>& tokens,
                                               int64_t* needle_position) {
  for (size_t i = 0; i + 3 < tokens.size(); ++i) {
    if (tokens[i] == t::kThe && tokens[i + 1] == t::kKey && tokens[i + 2] == t::kIs) {
      *needle_position = static_cast<int64_t>(i);
      std::vector<int32_t> digits;
      for (size_t j = i + 3;
           j < tokens.size() && tokens[j] >= t::kFirstDigit && tokens[j] < t::kFirstDigit + 10;
           ++j) {
        digits.push_back(tokens[j]);
      }
      return digits;
    }
  }
  return {};
}

void expect_answers_in_place(const LongContextExample& example) {
  ASSERT_EQ(example.answer_positions.size(), example.answer_tokens.size());
  for (size_t i = 0; i < example.answer_positions.size(); ++i) {
    const int64_t position = example.answer_positions[i];
    ASSERT_GE(position, 1);
    ASSERT_LT(position, static_cast<int64_t>(example.tokens.size()));
    EXPECT_EQ(example.tokens[position], example.answer_tokens[i]);
  }
}

TEST(SyntheticTasks, PasskeyAnswerIsTheNeedlesKey) {
  for (const int64_t length : {22, 100, 4096}) {
    for (uint64_t index = 0; index < 20; ++index) {
      const auto example = data::passkey_example(5, index, length, 64, 5, -1);
      ASSERT_EQ(static_cast<int64_t>(example.tokens.size()), length);
      expect_answers_in_place(example);
      int64_t needle = -1;
      const auto key = digits_after_first_needle(example.tokens, &needle);
      EXPECT_EQ(needle, example.needle_position);
      EXPECT_EQ(key, example.answer_tokens) << "length " << length << " index " << index;
      // The answers are the last tokens, after the question.
      EXPECT_EQ(example.answer_positions.back(), length - 1);
      EXPECT_EQ(example.tokens[length - 5 - 3 - 1], t::kQuestionMark);
      // Filler never contains task words, so the needle is the only other "the key is".
      for (int64_t i = 0; i < length; ++i) {
        const bool in_needle = i >= needle && i < needle + 9;
        const bool in_tail = i >= length - 5 - 3 - 5;
        if (!in_needle && !in_tail) {
          EXPECT_GE(example.tokens[i], t::kFirstFiller);
          EXPECT_LT(example.tokens[i], t::kFirstFiller + t::kFillerCount);
        }
      }
    }
  }
}

TEST(SyntheticTasks, PasskeyNeedleSitsAtTheRequestedDepth) {
  const int64_t length = 1000, filler = length - data::passkey_min_length(4);
  EXPECT_EQ(data::passkey_example(1, 0, length, 40, 4, 0.0).needle_position, 0);
  EXPECT_EQ(data::passkey_example(1, 0, length, 40, 4, 1.0).needle_position, filler);
  EXPECT_EQ(data::passkey_example(1, 0, length, 40, 4, 0.25).needle_position, filler / 4);
  std::set<int64_t> random_depths;
  for (uint64_t index = 0; index < 10; ++index) {
    random_depths.insert(data::passkey_example(1, index, length, 40, 4, -1).needle_position);
  }
  EXPECT_GT(random_depths.size(), 5u);
}

TEST(SyntheticTasks, ExamplesDependOnlyOnSeedAndIndex) {
  const auto passkey = [](uint64_t seed, uint64_t index) {
    return data::passkey_example(seed, index, 512, 64, 6, -1).tokens;
  };
  EXPECT_EQ(passkey(1, 7), passkey(1, 7));
  EXPECT_NE(passkey(1, 7), passkey(1, 8));
  EXPECT_NE(passkey(1, 7), passkey(2, 7));
  const auto recall = [](uint64_t seed, uint64_t index) {
    return data::associative_recall_example(seed, index, 512, 64, 16, 8).tokens;
  };
  EXPECT_EQ(recall(1, 7), recall(1, 7));
  EXPECT_NE(recall(1, 7), recall(1, 8));
  EXPECT_NE(recall(1, 7), recall(2, 7));
}

TEST(SyntheticTasks, AssociativeRecallAnswersAreTheQueriedKeysValues) {
  const int pairs = 12, queries = 5;
  for (const int64_t length : {34, 300, 20000}) {
    for (uint64_t index = 0; index < 20; ++index) {
      const int64_t vocab = data::associative_recall_min_vocab_size(pairs) + 7;
      const auto example =
          data::associative_recall_example(3, index, length, vocab, pairs, queries);
      ASSERT_EQ(static_cast<int64_t>(example.tokens.size()), length);
      expect_answers_in_place(example);
      ASSERT_EQ(example.answer_positions.size(), static_cast<size_t>(queries));
      const int32_t key_count = static_cast<int32_t>((vocab - t::kFirstRecallToken) / 2);
      const int32_t first_value = t::kFirstRecallToken + key_count;
      // The context before the first query: every key token is followed by its value.
      const int64_t context = example.answer_positions.front() - 1;
      std::map<int32_t, int32_t> value_of;
      for (int64_t i = 0; i < context; ++i) {
        const int32_t token = example.tokens[i];
        if (token >= t::kFirstRecallToken && token < first_value) {
          ASSERT_EQ(value_of.count(token), 0u) << "keys are distinct";
          value_of[token] = example.tokens[i + 1];
          EXPECT_GE(value_of[token], first_value);
          ++i;
        } else {
          EXPECT_LT(token, t::kFirstFiller + t::kFillerCount) << "only filler between pairs";
        }
      }
      EXPECT_EQ(value_of.size(), static_cast<size_t>(pairs));
      std::set<int32_t> asked;
      for (size_t q = 0; q < example.answer_positions.size(); ++q) {
        const int32_t key = example.tokens[example.answer_positions[q] - 1];
        ASSERT_EQ(value_of.count(key), 1u) << "queries ask keys of the context";
        EXPECT_EQ(example.answer_tokens[q], value_of[key]);
        asked.insert(key);
      }
      EXPECT_EQ(asked.size(), static_cast<size_t>(queries)) << "queries are distinct";
      EXPECT_EQ(example.answer_positions.back(), length - 1);
    }
  }
}

TEST(SyntheticTasks, AssociativeRecallPairsSpreadOverTheContext) {
  // Far from all pairs at the start: over many examples some pair lands in the last quarter.
  int64_t latest_key = 0;
  for (uint64_t index = 0; index < 10; ++index) {
    const auto example = data::associative_recall_example(3, index, 4000, 64, 16, 4);
    for (int64_t i = 0; i < 4000 - 8; ++i) {
      if (example.tokens[i] >= t::kFirstRecallToken) latest_key = std::max(latest_key, i);
    }
  }
  EXPECT_GT(latest_key, 3000);
}

TEST(SyntheticTasks, TooSmallVocabularyOrLengthIsRefused) {
  EXPECT_THROW(data::passkey_example(1, 0, 100, data::passkey_min_vocab_size() - 1, 5, -1),
               std::invalid_argument);
  EXPECT_NO_THROW(data::passkey_example(1, 0, 100, data::passkey_min_vocab_size(), 5, -1));
  EXPECT_THROW(data::passkey_example(1, 0, data::passkey_min_length(5) - 1, 64, 5, -1),
               std::invalid_argument);
  EXPECT_NO_THROW(data::passkey_example(1, 0, data::passkey_min_length(5), 64, 5, -1));
  const int64_t recall_vocab = data::associative_recall_min_vocab_size(16);
  EXPECT_THROW(data::associative_recall_example(1, 0, 100, recall_vocab - 1, 16, 4),
               std::invalid_argument);
  EXPECT_NO_THROW(data::associative_recall_example(1, 0, 100, recall_vocab, 16, 4));
  EXPECT_THROW(data::associative_recall_example(1, 0, 39, 64, 16, 4), std::invalid_argument);
  EXPECT_NO_THROW(data::associative_recall_example(1, 0, 40, 64, 16, 4));
  EXPECT_THROW(data::associative_recall_example(1, 0, 100, 64, 4, 5), std::invalid_argument);
}

TEST(SyntheticTasks, CountCorrectAnswersScoresNextTokenPredictions) {
  const auto example = data::passkey_example(1, 0, 64, 64, 3, 0.5);
  // A perfect model predicts every next token.
  std::vector<int32_t> predicted(example.tokens.begin() + 1, example.tokens.end());
  predicted.push_back(0);
  EXPECT_EQ(data::count_correct_answers(example, predicted), 3);
  predicted[example.answer_positions[1] - 1] = t::kPeriod;  // wrong second digit
  EXPECT_EQ(data::count_correct_answers(example, predicted), 2);
  predicted.assign(example.tokens.size(), t::kFirstFiller);
  EXPECT_EQ(data::count_correct_answers(example, predicted), 0);
}

TEST(SyntheticTasks, NeedleGridCoversLengthsAndDepths) {
  const auto grid = data::needle_grid({1024, 4096}, 5, 3);
  ASSERT_EQ(grid.size(), 2u * 5 * 3);
  std::set<std::pair<int64_t, double>> cells;
  std::set<uint64_t> indices;
  for (const auto& c : grid) {
    cells.insert({c.length, c.depth});
    indices.insert(c.index);
  }
  EXPECT_EQ(cells.size(), 10u);
  EXPECT_EQ(indices.size(), grid.size());
  EXPECT_EQ(cells.count({4096, 0.0}), 1u);
  EXPECT_EQ(cells.count({4096, 0.75}), 1u);
  EXPECT_EQ(cells.count({1024, 1.0}), 1u);
  EXPECT_EQ(data::needle_grid({100}, 1, 1).front().depth, 0.5);
  // A grid case builds an example with the needle at that depth.
  const auto& c = grid[grid.size() - 1];
  const auto example = data::passkey_example(9, c.index, c.length, 64, 5, c.depth);
  EXPECT_EQ(example.needle_position, c.length - data::passkey_min_length(5));
}

}  // namespace
}  // namespace sparsering

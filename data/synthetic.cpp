#include "data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <string>

#include "data/hash.h"

namespace sparsering::data {
namespace {

namespace t = task_tokens;

// Salts keep the tasks' random streams apart for the same (seed, index).
constexpr uint64_t kPasskeySalt = 0x70617373'6b657900ULL;
constexpr uint64_t kRecallSalt = 0x72656361'6c6c0000ULL;

SplitMix64 example_random(uint64_t seed, uint64_t index, uint64_t salt) {
  return SplitMix64(mix64(seed ^ mix64(index ^ salt)));
}

void append_filler(SplitMix64& random, int64_t count, std::vector<int32_t>& tokens) {
  for (int64_t i = 0; i < count; ++i) {
    tokens.push_back(t::kFirstFiller + static_cast<int32_t>(random.below(t::kFillerCount)));
  }
}

// `count` distinct values of [0, range) in increasing order (Floyd's algorithm: `count` draws,
// whatever the range, so a million-token context costs no more than a short one).
std::vector<int64_t> sorted_distinct(SplitMix64& random, int64_t count, int64_t range) {
  std::set<int64_t> chosen;
  for (int64_t j = range - count; j < range; ++j) {
    const auto value = static_cast<int64_t>(random.below(static_cast<uint64_t>(j) + 1));
    chosen.insert(chosen.count(value) ? j : value);
  }
  return {chosen.begin(), chosen.end()};
}

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

}  // namespace

std::vector<int32_t> copy_task_sequence(uint64_t seed, int64_t index, int64_t length,
                                        int64_t vocab_size, int64_t period) {
  if (period < 1 || period >= length || vocab_size < 2) {
    throw std::invalid_argument("copy task: need 1 <= period < length and vocab_size >= 2");
  }
  std::mt19937_64 generator(mix64(seed ^ mix64(static_cast<uint64_t>(index))));
  std::uniform_int_distribution<int32_t> token(1, static_cast<int32_t>(vocab_size - 1));
  std::vector<int32_t> sequence(length);
  for (int64_t i = 0; i < period; ++i) sequence[i] = token(generator);
  for (int64_t i = period; i < length; ++i) sequence[i] = sequence[i - period];
  return sequence;
}

// Needle "the key is <digits> ." + question "what is the key ?" + answer "the key is <digits>".
int64_t passkey_min_length(int digits) { return (4 + digits) + 5 + (3 + digits); }

int64_t passkey_min_vocab_size() { return t::kPeriod + 1; }

LongContextExample passkey_example(uint64_t seed, uint64_t index, int64_t length,
                                   int64_t vocab_size, int digits, double depth) {
  require(digits >= 1 && digits <= 18, "passkey: digits must be in [1, 18]");
  require(length >= passkey_min_length(digits),
          "passkey: length must be >= " + std::to_string(passkey_min_length(digits)));
  require(vocab_size >= passkey_min_vocab_size(),
          "passkey: vocab_size must be >= " + std::to_string(passkey_min_vocab_size()));
  require(depth <= 1, "passkey: depth must be <= 1 (< 0 = random)");
  SplitMix64 random = example_random(seed, index, kPasskeySalt);
  const int64_t filler = length - passkey_min_length(digits);
  const int64_t before = depth < 0 ? static_cast<int64_t>(random.below(filler + 1))
                                   : std::llround(depth * static_cast<double>(filler));
  std::vector<int32_t> key(digits);
  for (int32_t& digit : key) digit = t::kFirstDigit + static_cast<int32_t>(random.below(10));

  LongContextExample example;
  auto& tokens = example.tokens;
  tokens.reserve(length);
  append_filler(random, before, tokens);
  example.needle_position = static_cast<int64_t>(tokens.size());
  tokens.insert(tokens.end(), {t::kThe, t::kKey, t::kIs});
  tokens.insert(tokens.end(), key.begin(), key.end());
  tokens.push_back(t::kPeriod);
  append_filler(random, filler - before, tokens);
  tokens.insert(tokens.end(), {t::kWhat, t::kIs, t::kThe, t::kKey, t::kQuestionMark});
  tokens.insert(tokens.end(), {t::kThe, t::kKey, t::kIs});
  for (const int32_t digit : key) {
    example.answer_positions.push_back(static_cast<int64_t>(tokens.size()));
    example.answer_tokens.push_back(digit);
    tokens.push_back(digit);
  }
  return example;
}

int64_t associative_recall_min_length(int pairs, int queries) { return 2 * (pairs + queries); }

int64_t associative_recall_min_vocab_size(int pairs) {
  return t::kFirstRecallToken + 2 * static_cast<int64_t>(pairs);
}

LongContextExample associative_recall_example(uint64_t seed, uint64_t index, int64_t length,
                                              int64_t vocab_size, int pairs, int queries) {
  require(pairs >= 1 && queries >= 1 && queries <= pairs,
          "associative recall: need pairs >= 1 and 1 <= queries <= pairs");
  require(length >= associative_recall_min_length(pairs, queries),
          "associative recall: length must be >= " +
              std::to_string(associative_recall_min_length(pairs, queries)));
  require(vocab_size >= associative_recall_min_vocab_size(pairs),
          "associative recall: vocab_size must be >= " +
              std::to_string(associative_recall_min_vocab_size(pairs)));
  SplitMix64 random = example_random(seed, index, kRecallSalt);
  const int64_t key_count = (vocab_size - t::kFirstRecallToken) / 2;
  const int32_t first_value = t::kFirstRecallToken + static_cast<int32_t>(key_count);
  std::vector<int32_t> keys, values;
  for (const int64_t key : sorted_distinct(random, pairs, key_count)) {
    keys.push_back(t::kFirstRecallToken + static_cast<int32_t>(key));
    values.push_back(first_value + static_cast<int32_t>(random.below(key_count)));
  }
  // Pair order in the context is random too, not sorted by key.
  for (int i = pairs - 1; i > 0; --i) {
    const auto j = static_cast<int>(random.below(static_cast<uint64_t>(i) + 1));
    std::swap(keys[i], keys[j]);
    std::swap(values[i], values[j]);
  }

  // The context before the queries holds the pairs at random non-overlapping places: with F
  // filler tokens, pair i starts at s_i + i for distinct sorted s_i in [0, F + pairs) (stars
  // and bars: s_i - s_{i-1} - 1 filler tokens between pairs i-1 and i).
  const int64_t context = length - 2 * static_cast<int64_t>(queries);
  const int64_t filler = context - 2 * static_cast<int64_t>(pairs);
  const std::vector<int64_t> slots = sorted_distinct(random, pairs, filler + pairs);
  LongContextExample example;
  auto& tokens = example.tokens;
  tokens.reserve(length);
  for (int i = 0; i < pairs; ++i) {
    append_filler(random, slots[i] + i - static_cast<int64_t>(tokens.size()), tokens);
    tokens.push_back(keys[i]);
    tokens.push_back(values[i]);
  }
  append_filler(random, context - static_cast<int64_t>(tokens.size()), tokens);

  std::vector<int> order(pairs);
  std::iota(order.begin(), order.end(), 0);
  for (int q = 0; q < queries; ++q) {
    const auto pick = q + static_cast<int>(random.below(static_cast<uint64_t>(pairs - q)));
    std::swap(order[q], order[pick]);
    tokens.push_back(keys[order[q]]);
    example.answer_positions.push_back(static_cast<int64_t>(tokens.size()));
    example.answer_tokens.push_back(values[order[q]]);
    tokens.push_back(values[order[q]]);
  }
  return example;
}

int64_t count_correct_answers(const LongContextExample& example,
                              const std::vector<int32_t>& predicted_next) {
  require(predicted_next.size() == example.tokens.size(),
          "count_correct_answers: one prediction per token expected");
  int64_t correct = 0;
  for (size_t i = 0; i < example.answer_positions.size(); ++i) {
    correct += predicted_next[example.answer_positions[i] - 1] == example.answer_tokens[i];
  }
  return correct;
}

std::vector<NeedleCase> needle_grid(const std::vector<int64_t>& lengths, int num_depths,
                                    int samples_per_cell) {
  require(num_depths >= 1 && samples_per_cell >= 1,
          "needle_grid: num_depths and samples_per_cell must be >= 1");
  std::vector<NeedleCase> cases;
  uint64_t index = 0;
  for (const int64_t length : lengths) {
    for (int d = 0; d < num_depths; ++d) {
      const double depth = num_depths == 1 ? 0.5 : static_cast<double>(d) / (num_depths - 1);
      for (int s = 0; s < samples_per_cell; ++s) cases.push_back({length, depth, index++});
    }
  }
  return cases;
}

}  // namespace sparsering::data

// Synthetic long-context tasks, generated deterministically from (seed, sequence index) so every
// rank of a context-parallel group builds the same sequence and any data-parallel split of the
// same global batch sees the same data. Any context length works; the same generators make
// training sequences (the answers are the loss targets) and eval sets (the answers are scored).
#pragma once

#include <cstdint>
#include <vector>

namespace sparsering::data {

// Copy task: a random segment of `period` tokens repeated to `length`. Every token after the
// first segment is predictable only by attending `period` tokens back, so the loss falls only if
// attention works (across context-parallel shards too). Tokens are drawn from [1, vocab_size).
std::vector<int32_t> copy_task_sequence(uint64_t seed, int64_t index, int64_t length,
                                        int64_t vocab_size, int64_t period);

// Token ids of the passkey and associative-recall tasks. Token 0 is never emitted. Filler is
// drawn from its own 16 tokens so it can never be mistaken for a key, digit or value.
namespace task_tokens {
inline constexpr int32_t kFirstFiller = 1;
inline constexpr int32_t kFillerCount = 16;
inline constexpr int32_t kFirstDigit = 17;  // digits 0..9 are tokens 17..26
// The words of "the key is 12345 ." and "what is the key ?".
inline constexpr int32_t kThe = 27, kKey = 28, kIs = 29, kWhat = 30, kQuestionMark = 31,
                         kPeriod = 32;
// Associative recall: keys, then values, split [kFirstRecallToken, vocab_size) in halves.
inline constexpr int32_t kFirstRecallToken = 17;
}  // namespace task_tokens

// One example of a task whose answers are checkable: tokens[answer_positions[i]] ==
// answer_tokens[i], and a model answers correctly when its prediction at position
// answer_positions[i] - 1 (the next-token logits) is that token. For training, the answer
// positions are the loss targets.
struct LongContextExample {
  std::vector<int32_t> tokens;
  std::vector<int64_t> answer_positions;
  std::vector<int32_t> answer_tokens;
  int64_t needle_position = -1;  // passkey: first token of the needle sentence
};

// Passkey retrieval (Mohtashami and Jaggi, "Landmark Attention", 2023) as needle in a haystack:
//   filler.. [the key is d1..dn .] filler.. [what is the key ?] [the key is d1..dn]
// The needle starts after round(depth x F) of the F = length - passkey_min_length(digits) filler
// tokens (depth 0 = first token, 1 = just before the question); depth < 0 draws it uniformly per
// example. The answers are the n digits at the end.
LongContextExample passkey_example(uint64_t seed, uint64_t index, int64_t length,
                                   int64_t vocab_size, int digits, double depth);
int64_t passkey_min_length(int digits);
int64_t passkey_min_vocab_size();

// Multi-query associative recall (Arora et al., "Zoology", 2023, section 3) spread over a long
// context: `pairs` (key, value) token pairs with distinct keys at random places in filler, then
// `queries` distinct keys of them, each followed by its value. The answers are those values.
LongContextExample associative_recall_example(uint64_t seed, uint64_t index, int64_t length,
                                              int64_t vocab_size, int pairs, int queries);
int64_t associative_recall_min_length(int pairs, int queries);
int64_t associative_recall_min_vocab_size(int pairs);

// Answers the model got right: `predicted_next[p]` is the model's prediction of token p + 1
// (argmax of the logits at p), for every position p of example.tokens.
int64_t count_correct_answers(const LongContextExample& example,
                              const std::vector<int32_t>& predicted_next);

// One cell sample of a needle-in-a-haystack evaluation; build it with
// passkey_example(seed, index, length, vocab_size, digits, depth).
struct NeedleCase {
  int64_t length;
  double depth;
  uint64_t index;  // distinct over the grid, so every sample has its own passkey and filler
};

// The context length x needle depth grid: `num_depths` depths evenly spaced over [0, 1]
// (num_depths = 1 gives depth 0.5), `samples_per_cell` examples per cell, lengths outermost.
std::vector<NeedleCase> needle_grid(const std::vector<int64_t>& lengths, int num_depths,
                                    int samples_per_cell);

}  // namespace sparsering::data

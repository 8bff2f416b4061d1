// Synthetic long-context tasks, generated deterministically from (seed, sequence index) so every
// rank of a context-parallel group builds the same sequence and any data-parallel split of the
// same global batch sees the same data.
#pragma once

#include <cstdint>
#include <vector>

namespace sparsering::data {

// Copy task: a random segment of `period` tokens repeated to `length`. Every token after the
// first segment is predictable only by attending `period` tokens back, so the loss falls only if
// attention works (across context-parallel shards too). Tokens are drawn from [1, vocab_size).
std::vector<int32_t> copy_task_sequence(uint64_t seed, int64_t index, int64_t length,
                                        int64_t vocab_size, int64_t period);

}  // namespace sparsering::data

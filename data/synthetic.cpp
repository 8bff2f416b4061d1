#include "data/synthetic.h"

#include <random>
#include <stdexcept>

namespace sparsering::data {
namespace {

// splitmix64: decorrelates neighbouring (seed, index) pairs before seeding the generator.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<int32_t> copy_task_sequence(uint64_t seed, int64_t index, int64_t length,
                                        int64_t vocab_size, int64_t period) {
  if (period < 1 || period >= length || vocab_size < 2) {
    throw std::invalid_argument("copy task: need 1 <= period < length and vocab_size >= 2");
  }
  std::mt19937_64 generator(mix(seed ^ mix(static_cast<uint64_t>(index))));
  std::uniform_int_distribution<int32_t> token(1, static_cast<int32_t>(vocab_size - 1));
  std::vector<int32_t> sequence(length);
  for (int64_t i = 0; i < period; ++i) sequence[i] = token(generator);
  for (int64_t i = period; i < length; ++i) sequence[i] = sequence[i - period];
  return sequence;
}

}  // namespace sparsering::data

#include "data/index_permutation.h"

#include <stdexcept>

#include "data/hash.h"

namespace sparsering::data {

IndexPermutation::IndexPermutation(uint64_t size, uint64_t key) : size_(size) {
  while (half_bits_ < 32 && (uint64_t{1} << (2 * half_bits_)) < size) ++half_bits_;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  for (int round = 0; round < kRounds; ++round) {
    round_keys_[round] = mix64(key ^ mix64(static_cast<uint64_t>(round)));
  }
}

uint64_t IndexPermutation::feistel(uint64_t value) const {
  uint64_t left = value >> half_bits_, right = value & half_mask_;
  for (const uint64_t round_key : round_keys_) {
    const uint64_t next_right = left ^ (mix64(right ^ round_key) & half_mask_);
    left = right;
    right = next_right;
  }
  return (left << half_bits_) | right;
}

uint64_t IndexPermutation::operator()(uint64_t index) const {
  if (index >= size_) throw std::out_of_range("IndexPermutation: index beyond the size");
  uint64_t value = feistel(index);
  while (value >= size_) value = feistel(value);
  return value;
}

}  // namespace sparsering::data

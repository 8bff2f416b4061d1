// A pseudo-random bijection of [0, size) evaluated one index at a time, so shuffling a corpus of
// billions of sequences needs no table and any position of any epoch is computed directly.
#pragma once

#include <cstdint>

namespace sparsering::data {

// A balanced Feistel network on the smallest even number of bits that covers `size`, with
// cycle walking to stay inside [0, size) (Black and Rogaway, "Ciphers with arbitrary finite
// domains", CT-RSA 2002). The domain is less than 4 x size, so a lookup walks fewer than 4
// steps on average.
class IndexPermutation {
 public:
  IndexPermutation(uint64_t size, uint64_t key);
  uint64_t size() const { return size_; }
  uint64_t operator()(uint64_t index) const;  // index < size

 private:
  uint64_t feistel(uint64_t value) const;

  static constexpr int kRounds = 6;
  uint64_t size_;
  int half_bits_ = 1;
  uint64_t half_mask_ = 1;
  uint64_t round_keys_[kRounds];
};

}  // namespace sparsering::data

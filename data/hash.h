// Stateless pseudo-randomness for the data pipeline: everything is a pure function of
// (seed, index), so every rank builds the same sequence and resuming needs only the step.
#pragma once

#include <cstdint>

namespace sparsering::data {

// splitmix64 finaliser: decorrelates neighbouring inputs (Steele et al., "Fast splittable
// pseudorandom number generators", OOPSLA 2014).
inline uint64_t finalize64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline uint64_t mix64(uint64_t x) { return finalize64(x + 0x9e3779b97f4a7c15ULL); }

// A small generator with a fixed algorithm (unlike std::uniform_int_distribution, whose output
// differs between standard libraries), so eval sets are identical on every machine.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    return finalize64(state_);
  }
  // Uniform in [0, bound), bound > 0; rejection removes the modulo bias.
  uint64_t below(uint64_t bound) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t value = next();
    while (value >= limit) value = next();
    return value % bound;
  }

 private:
  uint64_t state_;
};

}  // namespace sparsering::data

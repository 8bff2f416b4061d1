#include "trainer/state/flat_layout.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace sparsering::trainer {
namespace {

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

}  // namespace

std::string bucket_name_of(const std::string& parameter_name) {
  if (parameter_name.rfind("block", 0) == 0) {
    const auto dot = parameter_name.find('.');
    if (dot != std::string::npos) return parameter_name.substr(0, dot);
  }
  return "embedding_and_head";
}

FlatLayout::FlatLayout(const std::vector<std::string>& names, const std::vector<int64_t>& numels,
                       int world_size, int64_t alignment)
    : world_size_(world_size) {
  if (names.size() != numels.size() || world_size < 1 || alignment < 1) {
    throw std::invalid_argument("FlatLayout: names and numels differ in length, or bad sizes");
  }
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string bucket = bucket_name_of(names[i]);
    auto found = index.find(bucket);
    if (found == index.end()) {
      found = index.emplace(bucket, buckets_.size()).first;
      buckets_.push_back({bucket, {}, 0, 0});
    }
    FlatBucket& b = buckets_[found->second];
    const int64_t offset = round_up(b.padded_numel, alignment);
    b.slots.push_back({i, offset, numels[i]});
    b.padded_numel = offset + numels[i];
    parameter_numel_ += numels[i];
  }
  for (FlatBucket& b : buckets_) {
    b.shard_numel = round_up((b.padded_numel + world_size - 1) / world_size, alignment);
    b.padded_numel = b.shard_numel * world_size;
  }
}

int64_t FlatLayout::shard_numel() const {
  int64_t total = 0;
  for (const FlatBucket& b : buckets_) total += b.shard_numel;
  return total;
}

std::vector<SlotPiece> FlatLayout::pieces(const FlatBucket& bucket, int rank) const {
  const int64_t first = rank * bucket.shard_numel, last = first + bucket.shard_numel;
  std::vector<SlotPiece> out;
  for (const FlatSlot& slot : bucket.slots) {
    const int64_t begin = std::max(first, slot.offset);
    const int64_t end = std::min(last, slot.offset + slot.numel);
    if (begin >= end) continue;
    out.push_back({&slot, begin - slot.offset, end - begin, begin - first});
  }
  return out;
}

}  // namespace sparsering::trainer

// Where each parameter lives in the flat, padded buffers of the sharded model state
// (parallel.zero_stage >= 1). Parameters are grouped into buckets (one per decoder layer, one for
// the embedding, final norm and output head); a bucket is one flat buffer in which every
// parameter starts at a multiple of `alignment` elements and whose length is padded to
// world x shard, shard a multiple of `alignment` too. Rank r owns elements [r x shard,
// (r + 1) x shard) of every bucket. With `alignment` a multiple of the N:M group size, groups
// (m consecutive input weights of a row) never straddle two ranks' slices.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsering::trainer {

struct FlatSlot {
  size_t parameter;  // index in the model's parameter order
  int64_t offset;    // first element within the bucket
  int64_t numel;
};

struct FlatBucket {
  std::string name;  // "block3", "embedding_and_head"
  std::vector<FlatSlot> slots;
  int64_t padded_numel = 0;  // world x shard_numel
  int64_t shard_numel = 0;   // elements each rank owns
};

// The part of a slot that falls inside one rank's slice of its bucket.
struct SlotPiece {
  const FlatSlot* slot;
  int64_t begin;         // first element within the parameter
  int64_t length;        // elements
  int64_t shard_offset;  // first element within the rank's slice
};

class FlatLayout {
 public:
  // `names` and `numels` describe the model's parameters in order. Names starting "block<i>."
  // go to bucket "block<i>"; the others share one bucket.
  FlatLayout(const std::vector<std::string>& names, const std::vector<int64_t>& numels,
             int world_size, int64_t alignment);

  const std::vector<FlatBucket>& buckets() const { return buckets_; }
  int world_size() const { return world_size_; }
  // Elements rank `rank` owns over all buckets.
  int64_t shard_numel() const;
  // Elements of the model's parameters (no padding).
  int64_t parameter_numel() const { return parameter_numel_; }
  // The pieces of `bucket` inside rank `rank`'s slice, in order.
  std::vector<SlotPiece> pieces(const FlatBucket& bucket, int rank) const;

 private:
  std::vector<FlatBucket> buckets_;
  int world_size_;
  int64_t parameter_numel_ = 0;
};

// The bucket a parameter name belongs to: "block<i>" for "block<i>.<...>", else
// "embedding_and_head".
std::string bucket_name_of(const std::string& parameter_name);

}  // namespace sparsering::trainer

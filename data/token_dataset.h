// Packs the documents of a shard set into training sequences of exactly `sequence_length`
// tokens and serves them by global sequence index. Access is stateless: the sequence for an index
// is a pure function of (shards, sequence_length, seed, index), so resuming a run needs only its
// step and any data-parallel split of a global batch reads the same data.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/index_permutation.h"
#include "data/token_shard.h"

namespace sparsering::data {

struct PackedSequence {
  std::vector<int32_t> tokens;
  // Per token: which document it belongs to, numbered from 0 within this sequence (the first,
  // possibly partial, document is 0). Tokens attend only to tokens of the same id when document
  // masking is on.
  std::vector<int32_t> document_ids;
};

class TokenDataset {
 public:
  // The documents of `shards`, in order, concatenated into one token stream; packed sequence k
  // is stream tokens [k L, (k + 1) L). Documents are split across sequences where they cross a
  // boundary; the last stream_tokens mod L tokens are not used. With `shuffle`, each epoch visits
  // the packed sequences in its own pseudo-random order derived from `seed`.
  TokenDataset(std::vector<TokenShard> shards, int64_t sequence_length, uint64_t seed,
               bool shuffle);
  // Opens every shard of `path` (list_token_shards).
  static TokenDataset open(const std::string& path, int64_t sequence_length, uint64_t seed,
                           bool shuffle);

  uint64_t num_sequences() const { return num_sequences_; }  // per epoch
  uint64_t num_tokens() const { return stream_tokens_; }     // in all shards
  uint64_t vocab_size() const { return vocab_size_; }        // the largest of the shards'
  const std::vector<TokenShard>& shards() const { return shards_; }

  // Index i is position i mod num_sequences() of epoch i / num_sequences().
  uint64_t packed_index(uint64_t index) const;
  std::vector<int32_t> sequence(uint64_t index) const;
  PackedSequence sequence_with_documents(uint64_t index) const;

 private:
  // The tokens of sequence `index`, and their document ids when `document_ids` is not null.
  std::vector<int32_t> read(uint64_t index, std::vector<int32_t>* document_ids) const;
  // The shard that holds stream token `position`.
  size_t shard_of(uint64_t position) const;

  std::vector<TokenShard> shards_;
  std::vector<uint64_t> shard_starts_;  // stream offset of each shard's first token
  int64_t sequence_length_;
  uint64_t seed_;
  bool shuffle_;
  uint64_t stream_tokens_ = 0, num_sequences_ = 0, vocab_size_ = 0;
};

}  // namespace sparsering::data

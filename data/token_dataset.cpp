#include "data/token_dataset.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "configs/user_error.h"
#include "data/hash.h"

namespace sparsering::data {

TokenDataset::TokenDataset(std::vector<TokenShard> shards, int64_t sequence_length, uint64_t seed,
                           bool shuffle)
    : shards_(std::move(shards)),
      sequence_length_(sequence_length),
      seed_(seed),
      shuffle_(shuffle) {
  if (sequence_length < 1) throw std::invalid_argument("TokenDataset: sequence_length < 1");
  if (shards_.empty()) throw std::invalid_argument("TokenDataset: no shards");
  for (const TokenShard& shard : shards_) {
    shard_starts_.push_back(stream_tokens_);
    stream_tokens_ += shard.token_count();
    vocab_size_ = std::max(vocab_size_, shard.vocab_size());
  }
  num_sequences_ = stream_tokens_ / static_cast<uint64_t>(sequence_length);
  if (num_sequences_ == 0) {
    const std::string others =
        shards_.size() > 1 ? " and " + std::to_string(shards_.size() - 1) + " more shards" : "";
    throw UserError(shards_.front().path() + others + ": " + std::to_string(stream_tokens_) +
                    " tokens in all, fewer than one sequence of " +
                    std::to_string(sequence_length) + "; add data or lower train.sequence_length");
  }
}

TokenDataset TokenDataset::open(const std::string& path, int64_t sequence_length, uint64_t seed,
                                bool shuffle) {
  std::vector<TokenShard> shards;
  for (const std::string& file : list_token_shards(path)) shards.emplace_back(file);
  return TokenDataset(std::move(shards), sequence_length, seed, shuffle);
}

uint64_t TokenDataset::packed_index(uint64_t index) const {
  const uint64_t epoch = index / num_sequences_, position = index % num_sequences_;
  if (!shuffle_) return position;
  // A fresh permutation per epoch, so consecutive epochs do not repeat one order.
  return IndexPermutation(num_sequences_, mix64(seed_ ^ mix64(epoch)))(position);
}

size_t TokenDataset::shard_of(uint64_t position) const {
  // The last shard starting at or before `position`; empty shards share a start with the next.
  const auto after = std::upper_bound(shard_starts_.begin(), shard_starts_.end(), position);
  return static_cast<size_t>(after - shard_starts_.begin()) - 1;
}

std::vector<int32_t> TokenDataset::sequence(uint64_t index) const { return read(index, nullptr); }

PackedSequence TokenDataset::sequence_with_documents(uint64_t index) const {
  PackedSequence out;
  out.tokens = read(index, &out.document_ids);
  return out;
}

std::vector<int32_t> TokenDataset::read(uint64_t index, std::vector<int32_t>* document_ids) const {
  const uint64_t length = static_cast<uint64_t>(sequence_length_);
  const uint64_t begin = packed_index(index) * length, end = begin + length;
  std::vector<int32_t> out(length);
  if (document_ids != nullptr) document_ids->assign(length, 0);
  int32_t document_id = -1;
  for (uint64_t position = begin; position < end;) {
    const size_t s = shard_of(position);
    const TokenShard& shard = shards_[s];
    const uint64_t local_begin = position - shard_starts_[s];
    const uint64_t local_end = std::min(shard.token_count(), end - shard_starts_[s]);
    int32_t* tokens = out.data() + (position - begin);
    shard.copy_tokens(local_begin, local_end, tokens);
    // A token beyond the shard's declared vocabulary would index past the embedding table.
    for (uint64_t i = 0; i < local_end - local_begin; ++i) {
      if (static_cast<uint64_t>(tokens[i]) >= shard.vocab_size()) {
        throw UserError(
            shard.path() + ": token " + std::to_string(static_cast<uint32_t>(tokens[i])) +
            " at position " + std::to_string(local_begin + i) +
            " is not below the shard's vocabulary size " + std::to_string(shard.vocab_size()) +
            "; the file is corrupt, regenerate it with launch/prepare_data.py");
      }
    }
    if (document_ids != nullptr) {
      // Every shard starts a new document; inside it, ids advance at each document start.
      int32_t* ids = document_ids->data() + (position - begin);
      uint64_t document = shard.document_of(local_begin);
      ++document_id;
      for (uint64_t p = local_begin; p < local_end; ++p) {
        if (shard.document_start(document + 1) <= p) {
          while (shard.document_start(document + 1) <= p) ++document;
          ++document_id;
        }
        ids[p - local_begin] = document_id;
      }
    }
    position = shard_starts_[s] + local_end;
  }
  return out;
}

}  // namespace sparsering::data

// The one entry point of the trainer into data/: a source of training sequences addressed by
// global sequence index, whatever data.source is. Sources are stateless (sequence i is a pure
// function of the config, the seed and i), so resuming needs only the step and every rank of a
// context-parallel group builds the same sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "configs/config.h"

namespace sparsering::data {

struct SequenceExample {
  std::vector<int32_t> tokens;  // sequence_length tokens
  // Per token: document number within the sequence (TOKEN_SHARDS); empty for the synthetic
  // tasks, whose sequence is one document.
  std::vector<int32_t> document_ids;
  // Positions p whose token is a loss target (predicted from the logits at p - 1): the answers
  // of PASSKEY and ASSOCIATIVE_RECALL. Empty = every next token is a target.
  std::vector<int64_t> answer_positions;
};

class SequenceSource {
 public:
  virtual ~SequenceSource() = default;
  // The tokens of global sequence `index`.
  virtual std::vector<int32_t> sequence(uint64_t index) = 0;
  // The tokens with their document ids and loss targets.
  virtual SequenceExample example(uint64_t index) = 0;
  // Distinct sequences before the data repeats (one epoch of a corpus); 0 = every index is a new
  // sequence (the synthetic tasks).
  virtual uint64_t sequences_per_epoch() const = 0;
  // One line for the run log, e.g. "token shards data/: 4 files, 1048576 tokens, 256 sequences
  // per epoch".
  virtual std::string description() const = 0;
};

// The source data.source names. Throws UserError when the data cannot serve sequences of
// `sequence_length` tokens below `vocab_size` (missing or corrupt shards, a vocabulary or
// sequence too small for the task), naming the input and the fix.
std::unique_ptr<SequenceSource> make_sequence_source(const config::DataConfig& data,
                                                     int64_t sequence_length, int64_t vocab_size,
                                                     uint64_t seed);

}  // namespace sparsering::data

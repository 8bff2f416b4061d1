// The sequences and labels of one micro step on one data-parallel rank, as whole sequences (each
// context-parallel rank then takes its layout's tokens).
#pragma once

#include <ATen/ATen.h>

#include "configs/config.h"
#include "data/batch_source.h"

namespace sparsering::trainer {

struct MicroBatch {
  at::Tensor tokens;  // int64 [micro_batch_size, sequence_length]
  // int64, same shape: the next token, or kIgnoreLabel. Task sources with answer positions
  // (passkey, associative recall) label only their answers; others label every next token.
  at::Tensor labels;
  // int32, same shape: the position of the first token of each token's document, from the
  // examples' document ids (data.document_mask); all 0 for sources of one document per sequence.
  at::Tensor document_starts;
};

// Sequence ids step x micro_steps x global_batch + micro x global_batch + dp_rank x mb + i, so any
// data-parallel split of the same global batch reads the same sequences, and resuming at a step
// continues with the next unseen ones.
MicroBatch micro_batch(const config::Experiment& experiment, data::SequenceSource& source,
                       int64_t step, int micro, int dp_rank);

// `examples` (each `length` tokens) as one batch, labelled as above, with document starts.
MicroBatch labelled_batch(const std::vector<data::SequenceExample>& examples, int64_t length);

}  // namespace sparsering::trainer

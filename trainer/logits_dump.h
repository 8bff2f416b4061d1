// `sparsering eval --logits-out FILE`: the logits of every position of the first held-out
// sequences, gathered from the context-parallel ring into sequence order and written as
// safetensors, so a checkpoint can be compared with another implementation (transformers)
// position by position, not only through the mean loss.
#pragma once

#include <string>
#include <vector>

#include "configs/config.h"
#include "data/batch_source.h"
#include "parallel/process_groups.h"
#include "trainer/sequence_scorer.h"

namespace sparsering::trainer {

// fp32 [sequences, sequence_length, vocab] logits of `sequences` (the same on every rank of this
// rank's ring), on the CPU in sequence order on every rank of the ring. `dense` as
// score_sequences; with data.document_mask attention stays inside documents.
at::Tensor sequence_logits(LengthModel& model, const std::vector<data::SequenceExample>& sequences,
                           bool dense, const config::Experiment& experiment,
                           parallel::ProcessGroups& groups, const at::Device& device);

// Writes `path` (on world rank 0; every rank calls it): "logits.<mode>" for each attention mode,
// "tokens" and "document_starts" ([sequences, sequence_length], F32: exact below 2^24) of the
// first micro_batch_size held-out sequences `first_index`, `first_index` + 1, ...
void write_held_out_logits(const std::string& path, LengthModel& model,
                           data::SequenceSource& source, uint64_t first_index,
                           const std::vector<std::string>& modes,
                           const config::Experiment& experiment, parallel::ProcessGroups& groups,
                           const at::Device& device);

}  // namespace sparsering::trainer

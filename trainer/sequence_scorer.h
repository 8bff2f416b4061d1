// Forward-only scoring of whole sequences for `sparsering eval`: the loss over the sequences'
// labels and the argmax answers at their answer positions, with every rank of the
// context-parallel ring running the model on its own tokens, as in training.
#pragma once

#include <memory>
#include <vector>

#include "configs/config.h"
#include "data/batch_source.h"
#include "parallel/process_groups.h"
#include "trainer/model/model.h"

namespace sparsering::trainer {

// The model at one sequence length on this rank: the layout of that length, the tokens' RoPE
// tables, and ring attentions that estimate a sparse pattern per batch (a dense evaluation runs
// the same rings dense).
struct LengthModel {
  int64_t sequence_length = 0;
  parallel::TokenLayout layout;
  std::vector<std::shared_ptr<parallel::RingAttention>> rings;
  Decoder model{nullptr};
  StepContext context;
};

// Builds the model for `sequence_length` as training builds it (model_setup.h), with freshly
// initialised weights: load a checkpoint into it or copy_weights from a loaded one.
LengthModel make_length_model(const config::Experiment& experiment, parallel::ProcessGroups& groups,
                              int64_t sequence_length, const NMSparsity* nm_sparsity,
                              const at::Device& device);

// Copies every parameter of `source` into `target` (the same architecture, any sequence length).
void copy_weights(const Decoder& source, Decoder& target);

struct SequenceScores {
  double loss_sum = 0;  // cross-entropy summed over this rank's labelled tokens
  double labels = 0;    // this rank's labelled tokens
  // Per sequence: answers whose argmax prediction is right, counted over the whole ring (every
  // rank of the context-parallel group holds the same counts).
  std::vector<int64_t> correct_answers;
  double attended_pairs = 0, dense_pairs = 0;  // this rank's attention work, summed over layers
};

// Runs `sequences` (each model.sequence_length tokens; the same sequences on every rank of this
// rank's context-parallel group) through the model without gradients. Labels are the training
// ones (trainer/micro_batch.h): the answers of task sources, else every next token. `dense`
// runs every causal block; otherwise the configured sparse pattern budgets apply. With
// data.document_mask, attention stays inside the sequences' documents, as in training.
SequenceScores score_sequences(LengthModel& model,
                               const std::vector<data::SequenceExample>& sequences, bool dense,
                               const config::Experiment& experiment,
                               parallel::ProcessGroups& groups, const at::Device& device);

}  // namespace sparsering::trainer

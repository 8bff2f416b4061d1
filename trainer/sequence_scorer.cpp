#include "trainer/sequence_scorer.h"

#include <torch/torch.h>

#include "trainer/micro_batch.h"
#include "trainer/model/chunked_loss.h"
#include "trainer/model/model_setup.h"

namespace sparsering::trainer {

LengthModel make_length_model(const config::Experiment& e, parallel::ProcessGroups& groups,
                              int64_t sequence_length, const NMSparsity* nm_sparsity,
                              const at::Device& device) {
  parallel::TokenLayout layout = token_layout(e, sequence_length);
  // Always a sparse ring: the pattern is estimated only when a sparse forward asks for it, and
  // StepContext::dense_attention runs the same ring dense.
  parallel::RingAttentionConfig ring_config = ring_attention_config(e, sequence_length);
  ring_config.sparse = true;
  auto rings = make_rings(e, ring_config, groups.ring_groups(), layout);
  Decoder model = make_decoder(e, rings, nm_sparsity, device);
  StepContext context;
  set_rope_tables(context, layout, groups.cp_rank(), e.model, device);
  return {sequence_length, std::move(layout), std::move(rings), std::move(model),
          std::move(context)};
}

void copy_weights(const Decoder& source, Decoder& target) {
  torch::NoGradGuard no_grad;
  auto targets = target->named_parameters();
  for (const auto& named : source->named_parameters()) {
    targets[named.key()].copy_(named.value());
  }
}

SequenceScores score_sequences(LengthModel& m, const std::vector<data::SequenceExample>& sequences,
                               bool dense, const config::Experiment& e,
                               parallel::ProcessGroups& groups, const at::Device& device) {
  torch::NoGradGuard no_grad;
  const int cp_rank = groups.cp_rank();
  const auto batch = static_cast<int64_t>(sequences.size());
  const MicroBatch labelled = labelled_batch(sequences, m.sequence_length);
  // The answer each position should predict (-1 = none), sharded like the tokens: this rank
  // checks the answers whose predicting position it holds.
  std::vector<int64_t> expected(batch * m.sequence_length, -1);
  for (int64_t i = 0; i < batch; ++i) {
    for (const int64_t p : sequences[i].answer_positions) {
      expected[i * m.sequence_length + p - 1] = sequences[i].tokens[p];
    }
  }
  const auto tokens = m.layout.shard(labelled.tokens, cp_rank).to(device);
  const auto labels = m.layout.shard(labelled.labels, cp_rank).to(device);
  const auto local_expected =
      m.layout.shard(at::tensor(expected, at::kLong).view({batch, m.sequence_length}), cp_rank)
          .to(device);

  set_document_mask(m.context, e, labelled, m.layout, cp_rank, device);
  m.context.estimate_pattern = true;
  m.context.dense_attention = dense;
  const auto hidden = m.model->forward(tokens, m.context);
  const auto weight = m.model->output_weight();
  SequenceScores scores;
  scores.loss_sum = cross_entropy_sum(hidden.reshape({-1, hidden.size(-1)}), weight,
                                      labels.reshape(-1), e.model.loss_chunk_tokens)
                        .item<double>();
  scores.labels = (labels != kIgnoreLabel).sum().item<double>();

  // Argmax only at the answer positions: full [tokens, vocab] logits never exist.
  const auto answer_at = (local_expected >= 0).nonzero();  // [answers, 2]: (sequence, local token)
  const auto rows = answer_at.select(1, 0), columns = answer_at.select(1, 1);
  const auto logits =
      at::matmul(hidden.index({rows, columns}).to(at::kFloat), weight.to(at::kFloat).t());
  const auto right = (logits.argmax(-1) == local_expected.index({rows, columns})).to(at::kLong);
  auto correct = at::zeros({batch}, right.options()).index_add_(0, rows, right).cpu();
  groups.cp().all_reduce(correct);
  scores.correct_answers.assign(correct.data_ptr<int64_t>(), correct.data_ptr<int64_t>() + batch);

  for (const auto& ring : m.rings) {
    scores.attended_pairs += static_cast<double>(ring->stats().attended_pairs);
    scores.dense_pairs += static_cast<double>(ring->stats().dense_pairs);
  }
  return scores;
}

}  // namespace sparsering::trainer

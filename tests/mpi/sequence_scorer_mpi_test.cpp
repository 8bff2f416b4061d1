// Evaluation scoring on 2, 4 and 8 context-parallel ranks equals a whole-sequence reference: the
// hidden states of every rank are gathered and unsharded, their argmax predictions counted with
// data::count_correct_answers and their cross-entropy summed, for every layout. Answers are made
// right or wrong on purpose (from the reference's own predictions), so the expected counts are
// known and an off-by-one position or a wrong shard mapping cannot pass. With document masking,
// the model's outputs in a document do not depend on the documents before it.
#include <gtest/gtest.h>
#include <mpi.h>

#include <random>

#include "configs/config.h"
#include "data/synthetic.h"
#include "parallel/layout.h"
#include "tests/attention_reference.h"
#include "trainer/micro_batch.h"
#include "trainer/model/chunked_loss.h"
#include "trainer/model/model_setup.h"
#include "trainer/sequence_scorer.h"

namespace sparsering {
namespace {

using trainer::LengthModel;

int world_size() {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  return world;
}

// A small model on a context-parallel ring of every rank: two blocks of 64 tokens per rank.
config::Experiment small_experiment(config::LayoutKind layout) {
  const int world = world_size();
  config::Experiment e = config::load_experiment(
      config::embedded_tiny_config(), "tiny",
      {"model.num_layers=1", "model.hidden_size=64", "model.num_heads=2", "model.num_kv_heads=1",
       "model.ffn_hidden_size=128", "parallel.context_parallel_size=" + std::to_string(world),
       "train.sequence_length=" + std::to_string(2 * world * 64)});
  e.parallel.layout = layout;
  return e;
}

// The whole sequence's final hidden states [batch, length, hidden], gathered from every rank.
at::Tensor gathered_hidden(LengthModel& m, parallel::ProcessGroups& groups,
                           const at::Tensor& tokens) {
  torch::NoGradGuard no_grad;
  m.context.dense_attention = true;
  const auto hidden = m.model->forward(m.layout.shard(tokens, groups.cp_rank()), m.context);
  return m.layout.unshard(groups.cp().all_gather(hidden.contiguous()));
}

// Argmax next-token predictions of the whole sequence, for data::count_correct_answers.
std::vector<int32_t> reference_predictions(LengthModel& m, parallel::ProcessGroups& groups,
                                           const std::vector<int32_t>& tokens) {
  const auto batch = trainer::labelled_batch({{tokens, {}, {}}}, m.sequence_length);
  const auto hidden = gathered_hidden(m, groups, batch.tokens)[0];
  const auto predicted = at::matmul(hidden, m.model->output_weight().t()).argmax(-1).to(at::kInt);
  return {predicted.data_ptr<int32_t>(), predicted.data_ptr<int32_t>() + predicted.numel()};
}

// Random tokens with answers at `positions`: answer i is the reference's own prediction when
// `right[i]`, another token otherwise. Set left to right, as an answer only changes the
// predictions at and after its position.
data::LongContextExample example_with_answers(LengthModel& m, parallel::ProcessGroups& groups,
                                              const std::vector<int64_t>& positions,
                                              const std::vector<bool>& right, int vocab,
                                              uint32_t seed) {
  std::mt19937 random(seed);
  data::LongContextExample example;
  for (int64_t i = 0; i < m.sequence_length; ++i) {
    example.tokens.push_back(1 + static_cast<int32_t>(random() % (vocab - 1)));
  }
  for (size_t i = 0; i < positions.size(); ++i) {
    const int64_t p = positions[i];
    const int32_t predicted = reference_predictions(m, groups, example.tokens)[p - 1];
    example.tokens[p] = right[i] ? predicted : (predicted + 1) % vocab;
    example.answer_positions.push_back(p);
    example.answer_tokens.push_back(example.tokens[p]);
  }
  return example;
}

class SequenceScorer : public ::testing::TestWithParam<config::LayoutKind> {};

TEST_P(SequenceScorer, MatchesTheWholeSequenceReference) {
  const config::Experiment e = small_experiment(GetParam());
  parallel::ProcessGroups groups({1, world_size(), 0}, /*use_nccl=*/false);
  LengthModel m =
      trainer::make_length_model(e, groups, e.train.sequence_length, nullptr, at::Device(at::kCPU));
  const int64_t length = m.sequence_length;
  // Answers at the first predictable token, across block boundaries, and at the very end.
  const std::vector<int64_t> positions = {1, 63, 64, 65, length / 2, length - 1};
  const std::vector<bool> right = {true, false, true, true, false, true};
  std::vector<data::LongContextExample> examples = {
      example_with_answers(m, groups, positions, right, e.model.vocab_size, 1),
      example_with_answers(m, groups, positions, std::vector<bool>(positions.size(), false),
                           e.model.vocab_size, 2)};

  std::vector<data::SequenceExample> sequences;
  for (const auto& example : examples) {
    sequences.push_back({example.tokens, {}, example.answer_positions});
  }
  const trainer::SequenceScores scores =
      trainer::score_sequences(m, sequences, /*dense=*/true, e, groups, at::Device(at::kCPU));

  ASSERT_EQ(scores.correct_answers.size(), 2u);
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto predictions = reference_predictions(m, groups, examples[i].tokens);
    EXPECT_EQ(scores.correct_answers[i], data::count_correct_answers(examples[i], predictions));
  }
  EXPECT_EQ(scores.correct_answers[0], 4);
  EXPECT_EQ(scores.correct_answers[1], 0);

  // The loss over the answers, summed over the ring, equals the whole sequence's.
  const auto batch = trainer::labelled_batch(sequences, length);
  const auto hidden = gathered_hidden(m, groups, batch.tokens);
  const double reference =
      trainer::cross_entropy_sum(hidden.reshape({-1, hidden.size(-1)}), m.model->output_weight(),
                                 batch.labels.reshape(-1), 0)
          .item<double>();
  auto sums = at::tensor({scores.loss_sum, scores.labels}, at::kDouble);
  groups.world().all_reduce(sums);
  EXPECT_NEAR(sums[0].item<double>(), reference, 1e-4 * std::abs(reference));
  EXPECT_EQ(sums[1].item<double>(), 2.0 * positions.size());
}

// The whole sequence's final hidden states of `example`, its document starts set in the model's
// context the way training sets them (no-op unless experiment.data.document_mask).
at::Tensor hidden_of(LengthModel& m, parallel::ProcessGroups& groups, const config::Experiment& e,
                     const data::SequenceExample& example) {
  const auto batch = trainer::labelled_batch({example}, m.sequence_length);
  trainer::set_document_mask(m.context, e, batch, m.layout, groups.cp_rank(), at::Device(at::kCPU));
  return gathered_hidden(m, groups, batch.tokens)[0];
}

// The eval loss of `example`'s answers, summed over the ring.
double answer_loss(LengthModel& m, parallel::ProcessGroups& groups, const config::Experiment& e,
                   const data::SequenceExample& example) {
  const auto scores =
      trainer::score_sequences(m, {example}, /*dense=*/true, e, groups, at::Device(at::kCPU));
  auto sum = at::tensor({scores.loss_sum}, at::kDouble);
  groups.world().all_reduce(sum);
  return sum.item<double>();
}

// Documents [0, 70), [70, length / 2 + 5), [length / 2 + 5, length), boundaries inside blocks and
// crossing ranks. Replacing the tokens of document 0 leaves the hidden states of documents 1 and 2
// and the eval loss of answers predicted there unchanged with data.document_mask, and changes
// both without it (so the check can fail).
TEST_P(SequenceScorer, DocumentMaskHidesEarlierDocuments) {
  config::Experiment e = small_experiment(GetParam());
  parallel::ProcessGroups groups({1, world_size(), 0}, /*use_nccl=*/false);
  LengthModel m =
      trainer::make_length_model(e, groups, e.train.sequence_length, nullptr, at::Device(at::kCPU));
  const int64_t length = m.sequence_length, second = 70, third = length / 2 + 5;
  std::mt19937 random(11);
  data::SequenceExample original;
  for (int64_t t = 0; t < length; ++t) {
    original.tokens.push_back(1 + static_cast<int32_t>(random() % (e.model.vocab_size - 1)));
    original.document_ids.push_back(t < second ? 0 : t < third ? 1 : 2);
  }
  // Answers predicted from positions of documents 1 and 2 (an answer at p is predicted at p - 1).
  original.answer_positions = {second + 1, second + 30, third, third + 1, length - 1};
  data::SequenceExample changed = original;
  for (int64_t t = 0; t < second; ++t) {
    changed.tokens[t] = 1 + (changed.tokens[t] % (e.model.vocab_size - 1));
  }

  for (const bool mask : {true, false}) {
    SCOPED_TRACE(mask ? "document mask" : "no document mask");
    e.data.document_mask = mask;
    const auto before = hidden_of(m, groups, e, original);
    const auto after = hidden_of(m, groups, e, changed);
    const double later_documents =
        testing::max_abs_diff(before.slice(0, second), after.slice(0, second));
    EXPECT_GT(testing::max_abs_diff(before.slice(0, 0, second), after.slice(0, 0, second)), 1e-2);
    const double loss_before = answer_loss(m, groups, e, original);
    const double loss_after = answer_loss(m, groups, e, changed);
    if (mask) {
      EXPECT_LT(later_documents, 1e-5);
      EXPECT_NEAR(loss_after, loss_before, 1e-6 * std::abs(loss_before));
    } else {
      EXPECT_GT(later_documents, 1e-3);
      EXPECT_GT(std::abs(loss_after - loss_before), 1e-4 * std::abs(loss_before));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, SequenceScorer,
                         ::testing::Values(config::LayoutKind::kContiguous,
                                           config::LayoutKind::kZigzag,
                                           config::LayoutKind::kBalanced),
                         [](const auto& info) { return parallel::layout_name(info.param); });

}  // namespace
}  // namespace sparsering

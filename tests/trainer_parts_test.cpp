// Trainer pieces with a closed-form or plain-ATen reference: schedule, chunked loss, activation
// checkpointing, RoPE tables, document starts of a micro batch and the synthetic copy task.
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>
#include <vector>

#include "data/synthetic.h"
#include "kernels/cross_entropy.h"
#include "trainer/micro_batch.h"
#include "trainer/model/activation_checkpoint.h"
#include "trainer/model/chunked_loss.h"
#include "trainer/model/model.h"
#include "trainer/schedule.h"

namespace sparsering {
namespace {

TEST(Schedule, WarmupThenCosineToTheFloor) {
  const config::ScheduleConfig cosine{config::ScheduleKind::kCosine, 10, 0.1};
  EXPECT_DOUBLE_EQ(trainer::learning_rate(cosine, 1.0, 5, 110), 0.5);
  EXPECT_DOUBLE_EQ(trainer::learning_rate(cosine, 1.0, 10, 110), 1.0);
  EXPECT_NEAR(trainer::learning_rate(cosine, 1.0, 60, 110), 0.55, 1e-12);
  EXPECT_NEAR(trainer::learning_rate(cosine, 1.0, 110, 110), 0.1, 1e-12);
  const config::ScheduleConfig linear{config::ScheduleKind::kLinear, 0, 0.0};
  EXPECT_NEAR(trainer::learning_rate(linear, 2.0, 50, 100), 1.0, 1e-12);
  const config::ScheduleConfig constant{config::ScheduleKind::kConstant, 0, 0.0};
  EXPECT_DOUBLE_EQ(trainer::learning_rate(constant, 2.0, 77, 100), 2.0);
}

TEST(ChunkedCrossEntropy, MatchesPlainCrossEntropyAndItsGradients) {
  at::manual_seed(9);
  auto hidden = at::randn({37, 16}, at::kDouble).requires_grad_(true);
  auto weight = at::randn({11, 16}, at::kDouble).requires_grad_(true);
  auto labels = at::randint(0, 11, {37}, at::kLong);
  labels[3] = trainer::kIgnoreLabel;
  labels[36] = trainer::kIgnoreLabel;
  auto loss = trainer::chunked_cross_entropy(hidden, weight, labels, /*chunk_tokens=*/8, 50.0);
  auto grad_hidden = torch::autograd::grad({loss}, {hidden, weight});

  auto h2 = hidden.detach().requires_grad_(true), w2 = weight.detach().requires_grad_(true);
  auto reference = at::cross_entropy_loss(at::matmul(h2, w2.t()), labels, {}, at::Reduction::Sum,
                                          trainer::kIgnoreLabel) /
                   50.0;
  auto reference_grads = torch::autograd::grad({reference}, {h2, w2});
  EXPECT_NEAR(loss.item<double>(), reference.item<double>(), 1e-6);
  EXPECT_TRUE(at::allclose(grad_hidden[0], reference_grads[0], 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(grad_hidden[1].to(at::kDouble), reference_grads[1], 1e-5, 1e-6));
}

// The rows' reference twin (the CPU path of kernels/cross_entropy.h): an ignored row has no loss
// and an exact zero gradient (whatever its logits hold); a label outside the vocabulary gives a NaN
// loss (the NaN policy stops the step) rather than an out-of-bounds read.
TEST(CrossEntropyRows, IgnoredRowsAreZeroAndLabelsPastTheVocabularyAreNaN) {
  at::manual_seed(5);
  auto logits = at::randn({4, 6});
  logits[1][4] = std::numeric_limits<float>::quiet_NaN();  // in an ignored row: no effect
  const auto labels = at::tensor(std::vector<int64_t>{2, trainer::kIgnoreLabel, 6, -1});
  const auto rows =
      kernels::cross_entropy_rows(logits, labels, trainer::kIgnoreLabel, 0.5, at::kFloat);
  const auto lse = at::logsumexp(logits[0], 0).item<float>();
  EXPECT_NEAR(rows.losses[0].item<float>(), lse - logits[0][2].item<float>(), 1e-6);
  EXPECT_EQ(rows.losses[1].item<float>(), 0.0f);
  EXPECT_TRUE(std::isnan(rows.losses[2].item<float>()));
  EXPECT_TRUE(std::isnan(rows.losses[3].item<float>()));
  EXPECT_EQ(rows.grad[1].abs().max().item<float>(), 0.0f);
  EXPECT_NEAR(rows.grad[0][2].item<float>(), 0.5 * (std::exp(logits[0][2].item<float>() - lse) - 1),
              1e-6);
  EXPECT_NEAR(rows.grad[0].sum().item<float>(), 0.0, 1e-6);
}

TEST(ActivationCheckpoint, GivesTheSameGradientsAsThePlainGraph) {
  at::manual_seed(2);
  auto weight = at::randn({8, 8}).requires_grad_(true);
  auto block = [&](const at::Tensor& x) { return at::tanh(at::matmul(x, weight)) * x; };
  auto x = at::randn({4, 8}).requires_grad_(true);
  trainer::checkpoint(block, block, x).pow(2).sum().backward();
  const auto checkpointed_x = x.grad().clone(), checkpointed_w = weight.grad().clone();
  x.mutable_grad() = at::Tensor();
  weight.mutable_grad() = at::Tensor();
  block(x).pow(2).sum().backward();
  EXPECT_TRUE(at::allclose(checkpointed_x, x.grad()));
  EXPECT_TRUE(at::allclose(checkpointed_w, weight.grad()));
}

TEST(Rope, TablesAreAnglesOfScaledPositions) {
  const auto positions = at::tensor({0, 3, 10}, at::kLong);
  config::ModelConfig model{};
  model.hidden_size = 8;
  model.num_heads = 2;  // head dim 4
  model.rope_theta = 100.0;
  model.rope_type = config::RopeType::kLinear;
  model.rope_scaling_factor = 2.0;
  const auto [cos, sin] = trainer::rope_tables(positions, model);
  // angle(p, i) = (p / 2) * 100^(-2i/4)
  EXPECT_NEAR(cos[1][0].item<float>(), std::cos(1.5), 1e-6);
  EXPECT_NEAR(sin[2][1].item<float>(), std::sin(5.0 / 10.0), 1e-6);
  EXPECT_NEAR(cos[0][1].item<float>(), 1.0, 1e-6);
}

TEST(MicroBatch, DocumentStartsFollowTheDocumentIds) {
  // Sequence 0: documents [0, 3), [3, 4) (one token), [4, 6); sequence 1 has no document ids
  // (a synthetic task): one document.
  const std::vector<data::SequenceExample> examples = {
      {{5, 6, 7, 8, 9, 10}, {0, 0, 0, 1, 2, 2}, {}}, {{1, 2, 3, 4, 5, 6}, {}, {}}};
  const auto batch = trainer::labelled_batch(examples, 6);
  EXPECT_EQ(batch.document_starts.scalar_type(), at::kInt);
  EXPECT_TRUE(batch.document_starts.equal(
      at::tensor({0, 0, 0, 3, 4, 4, 0, 0, 0, 0, 0, 0}, at::kInt).view({2, 6})));
  EXPECT_THROW(trainer::labelled_batch({{{1, 2, 3}, {0, 1}, {}}}, 3), std::logic_error);
}

TEST(CopyTask, RepeatsItsSegmentAndIsDeterministic) {
  const auto a = data::copy_task_sequence(1, 5, 100, 50, 16);
  EXPECT_EQ(a, data::copy_task_sequence(1, 5, 100, 50, 16));
  EXPECT_NE(a, data::copy_task_sequence(1, 6, 100, 50, 16));
  for (size_t i = 16; i < a.size(); ++i) EXPECT_EQ(a[i], a[i - 16]);
  for (int32_t token : a) EXPECT_TRUE(token >= 1 && token < 50);
  EXPECT_THROW(data::copy_task_sequence(1, 5, 100, 50, 0), std::invalid_argument);
}

}  // namespace
}  // namespace sparsering

// The cross-entropy row kernel (kernels/cuda/cross_entropy.cu) against its reference twin on the
// same GPU logits and against fp64, and the chunked output-projection loss on the GPU (bf16
// products with fp32 logits) against fp64 on the same rounded inputs. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <cmath>

#include "kernels/cross_entropy.h"
#include "tests/attention_reference.h"
#include "trainer/model/chunked_loss.h"

namespace sparsering {
namespace {

constexpr int64_t kIgnore = -100;

struct RowsCase {
  int64_t rows;
  int64_t vocab;
  at::ScalarType grad_type;
  double tolerance;  // of |grad - fp64| / grad_scale: the gradient dtype's rounding
};

class CrossEntropyRowsGpu : public ::testing::TestWithParam<RowsCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  }
};

TEST_P(CrossEntropyRowsGpu, MatchesTheTwinAndFp64) {
  const RowsCase c = GetParam();
  at::manual_seed(static_cast<uint64_t>(c.rows * 31 + c.vocab));
  auto logits = at::randn({c.rows, c.vocab}).mul_(4.0);
  auto labels = at::randint(0, c.vocab, {c.rows}, at::kLong);
  labels[0] = kIgnore;
  if (c.rows > 2) {
    labels[2] = c.vocab;                          // outside the vocabulary: NaN loss
    logits[1][labels[1].item<int64_t>()] = 30.0;  // a confident row
  }
  if (c.vocab > 3) logits.select(1, 3).fill_(-INFINITY);  // a masked logit in every row
  const double scale = 1.0 / 777.0;

  const auto gpu_logits = logits.cuda(), gpu_labels = labels.cuda();
  {  // Poison the blocks the kernel will write (the caching allocator hands them back).
    const auto losses = at::full({c.rows}, NAN, gpu_logits.options());
    const auto grad = at::full({c.rows, c.vocab}, NAN, gpu_logits.options().dtype(c.grad_type));
  }
  const auto got = kernels::cross_entropy_rows(gpu_logits, gpu_labels, kIgnore, scale, c.grad_type);
  const auto twin =
      kernels::cross_entropy_rows_reference(gpu_logits, gpu_labels, kIgnore, scale, c.grad_type);
  ASSERT_EQ(got.grad.scalar_type(), c.grad_type);

  // fp64 on the CPU.
  const auto x = logits.to(at::kDouble);
  const auto lse = at::logsumexp(x, -1);
  const auto valid = labels.ne(kIgnore).logical_and(labels.lt(c.vocab));
  const auto safe = at::where(valid, labels, at::zeros_like(labels)).unsqueeze(1);
  auto expected_grad = at::exp(x - lse.unsqueeze(1));
  expected_grad.scatter_add_(1, safe, valid.to(at::kDouble).neg().unsqueeze(1));
  expected_grad.mul_(labels.ne(kIgnore).to(at::kDouble).mul(scale).unsqueeze(1));
  const auto expected_loss =
      (lse - x.gather(1, safe).squeeze(1)).masked_fill(labels.eq(kIgnore), 0);

  const auto losses = got.losses.cpu();
  EXPECT_EQ(losses[0].item<float>(), 0.0f) << "an ignored row has no loss";
  if (c.rows > 2) {
    EXPECT_TRUE(std::isnan(losses[2].item<float>())) << "a label past the vocabulary";
  }
  const auto checked = valid.logical_or(labels.eq(kIgnore));
  EXPECT_FALSE(at::isnan(losses.masked_select(checked)).any().item<bool>());
  EXPECT_TRUE(at::equal(at::isnan(twin.losses.cpu()), at::isnan(losses)));
  EXPECT_LT(
      testing::max_abs_diff(losses.masked_select(checked), expected_loss.masked_select(checked)),
      1e-4 * (1.0 + expected_loss.abs().max().item<double>()));
  EXPECT_LT(testing::max_abs_diff(losses.masked_select(checked),
                                  twin.losses.cpu().masked_select(checked)),
            1e-4 * (1.0 + expected_loss.abs().max().item<double>()));

  // The gradient of every row but the out-of-range one (its softmax part is still written).
  const auto rows = checked.nonzero().squeeze(1);
  const auto grad = got.grad.cpu().to(at::kDouble);
  EXPECT_FALSE(at::isnan(grad).any().item<bool>()) << "an element left unwritten";
  EXPECT_EQ(grad[0].abs().max().item<double>(), 0.0) << "an ignored row has zero gradient";
  EXPECT_LT(testing::max_abs_diff(grad.index_select(0, rows), expected_grad.index_select(0, rows)),
            c.tolerance * scale);
  EXPECT_LT(testing::max_abs_diff(grad, twin.grad.cpu().to(at::kDouble)), 2 * c.tolerance * scale);

  // The loss alone writes no gradient.
  const auto loss_only = kernels::cross_entropy_rows(gpu_logits, gpu_labels, kIgnore, 1.0, {});
  EXPECT_FALSE(loss_only.grad.defined());
  EXPECT_TRUE(
      at::allclose(loss_only.losses.cpu().masked_select(checked), losses.masked_select(checked)));
}

INSTANTIATE_TEST_SUITE_P(Shapes, CrossEntropyRowsGpu,
                         ::testing::Values(RowsCase{300, 16384, at::kBFloat16, 8e-3},
                                           RowsCase{64, 1001, at::kHalf, 1e-3},
                                           RowsCase{17, 128256, at::kFloat, 4e-6},
                                           RowsCase{5, 1, at::kBFloat16, 8e-3}));

TEST(ChunkedCrossEntropyGpu, Bf16ProductsMatchFp64OnTheSameInputs) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  at::manual_seed(4);
  const auto hidden_bf16 = at::randn({1000, 256}).to(at::kBFloat16);
  const auto weight_bf16 = at::randn({5003, 256}).mul_(0.05).to(at::kBFloat16);
  auto labels = at::randint(0, 5003, {1000}, at::kLong);
  labels.narrow(0, 10, 20).fill_(trainer::kIgnoreLabel);

  auto hidden = hidden_bf16.cuda().requires_grad_(true);
  auto weight = weight_bf16.cuda().requires_grad_(true);
  const auto loss = trainer::chunked_cross_entropy(hidden, weight, labels.cuda(), 384, 980.0);
  const auto grads = torch::autograd::grad({loss}, {hidden, weight});

  auto h64 = hidden_bf16.to(at::kDouble).requires_grad_(true);
  auto w64 = weight_bf16.to(at::kDouble).requires_grad_(true);
  const auto reference = at::cross_entropy_loss(at::matmul(h64, w64.t()), labels, {},
                                                at::Reduction::Sum, trainer::kIgnoreLabel) /
                         980.0;
  const auto expected = torch::autograd::grad({reference}, {h64, w64});
  EXPECT_NEAR(loss.item<double>(), reference.item<double>(), 1e-4 * reference.item<double>());
  // bf16 gradients (the product of bf16-rounded softmax gradients): within 2% of the largest.
  for (int i = 0; i < 2; ++i) {
    const double largest = expected[i].abs().max().item<double>();
    EXPECT_LT(testing::max_abs_diff(grads[i], expected[i]), 2e-2 * largest) << "gradient " << i;
  }
}

}  // namespace
}  // namespace sparsering

// The cuDNN path of the dense ring (kernels/cudnn_attention.h) against dense fp64 attention:
// queries attend a key shard wholly before them (all visible) and their own shard (causal); the
// two partials merge by LSE, and the backward of each part, fed the merged output and LSE, adds up
// to the fp64 gradients. Skipped without a GPU.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "kernels/cudnn_attention.h"
#include "kernels/sparse_attention.h"
#include "tests/attention_reference.h"

namespace sparsering {
namespace {

struct CudnnCase {
  int64_t heads, kv_heads, dim, tokens;
};

class CudnnAttentionGpu : public ::testing::TestWithParam<CudnnCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  }
};

TEST_P(CudnnAttentionGpu, PlainShardsMergeToDenseReference) {
  const CudnnCase c = GetParam();
  const int64_t n = c.tokens;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.dim));
  const auto cuda = at::TensorOptions().device(at::kCUDA);
  at::manual_seed(5);
  // Rounded to bf16 once, so the fp64 reference sees the kernel's inputs.
  const auto q = at::randn({1, n, c.heads, c.dim}).to(at::kBFloat16);
  const auto k = at::randn({1, 2 * n, c.kv_heads, c.dim}).to(at::kBFloat16);
  const auto v = at::randn({1, 2 * n, c.kv_heads, c.dim}).to(at::kBFloat16);
  const auto dout = at::randn({1, n, c.heads, c.dim}).to(at::kBFloat16);
  // Key shard 0 holds positions [0, n), shard 1 (the queries' own) [n, 2n).
  const std::vector<kernels::PlainMask> masks = {kernels::PlainMask::kFull,
                                                 kernels::PlainMask::kCausal};

  auto out = at::zeros({1, n, c.heads, c.dim}, cuda);
  auto lse = at::full({1, c.heads, n}, -INFINITY, cuda);
  for (int shard = 0; shard < 2; ++shard) {
    const auto part = kernels::cudnn_attention_forward(
        q.cuda(), k.slice(1, shard * n, (shard + 1) * n).cuda(),
        v.slice(1, shard * n, (shard + 1) * n).cuda(), masks[shard], scale);
    ASSERT_FALSE(at::isnan(part.out).any().item<bool>());
    kernels::lse_merge(out, lse, part.out, part.lse);
  }

  const auto query_positions = at::arange(n, 2 * n, at::kLong);
  const auto key_positions = at::arange(2 * n, at::kLong);
  const auto mask = (key_positions.unsqueeze(0) <= query_positions.unsqueeze(1))
                        .view({1, 1, n, 2 * n})
                        .expand({1, c.heads, n, 2 * n});
  auto q64 = q.to(at::kDouble).requires_grad_(true);
  auto k64 = k.to(at::kDouble).requires_grad_(true);
  auto v64 = v.to(at::kDouble).requires_grad_(true);
  auto [ref_out, ref_lse] = testing::reference_attention(q64, k64, v64, mask, scale);
  (ref_out * dout.to(at::kDouble)).sum().backward();
  // bf16 output rounding bounds the forward error; the LSE is fp32 throughout.
  EXPECT_LT(testing::max_abs_diff(out, ref_out), 2e-2);
  EXPECT_LT(testing::max_abs_diff(lse, ref_lse), 1e-3);

  const auto out_final = out.to(at::kBFloat16).contiguous();
  auto dq = at::zeros(q.sizes(), cuda);
  auto dk = at::zeros(k.sizes(), cuda), dv = at::zeros(v.sizes(), cuda);
  for (int shard = 0; shard < 2; ++shard) {
    auto dk_shard = dk.slice(1, shard * n, (shard + 1) * n);
    auto dv_shard = dv.slice(1, shard * n, (shard + 1) * n);
    kernels::cudnn_attention_backward(dout.cuda(), q.cuda(),
                                      k.slice(1, shard * n, (shard + 1) * n).cuda(),
                                      v.slice(1, shard * n, (shard + 1) * n).cuda(), out_final, lse,
                                      masks[shard], scale, dq, dk_shard, dv_shard);
  }
  auto relative_error = [](const at::Tensor& got, const at::Tensor& truth) {
    return testing::max_abs_diff(got, truth) / (truth.abs().max().item<double>() + 1e-12);
  };
  EXPECT_FALSE(at::isnan(dq).any().item<bool>() || at::isnan(dk).any().item<bool>() ||
               at::isnan(dv).any().item<bool>());
  EXPECT_LT(relative_error(dq, q64.grad()), 0.03) << "dq";
  EXPECT_LT(relative_error(dk, k64.grad()), 0.03) << "dk";
  EXPECT_LT(relative_error(dv, v64.grad()), 0.03) << "dv";
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudnnAttentionGpu,
                         ::testing::Values(CudnnCase{4, 4, 64, 256}, CudnnCase{8, 2, 128, 384},
                                           CudnnCase{4, 1, 128, 512}));

}  // namespace
}  // namespace sparsering

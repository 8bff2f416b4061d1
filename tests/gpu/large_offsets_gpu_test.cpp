// The largest per-GPU shape users run: 512K tokens of 32 heads of dim 128 on one GPU, 8 blocks
// more so that q, out, dout and dq hold more than 2^31 elements and the checked last blocks lie
// past the point where a 32-bit element offset wraps. The pattern is a local band (each query
// block with its own and the previous block) plus 64 sink columns, so the last blocks' outputs
// and gradients follow from a small dense fp64 reference: their queries see only the sink keys
// and the tail, and the tail keys are seen only by tail queries. The forward's outputs are
// poisoned with NaN first, so any element it does not write fails; the backward adds into
// zeroed gradients, so its unwritten elements fail only where the reference checks them.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>

#include "kernels/sparse_attention.h"
#include "kernels/sparse_index.h"
#include "kernels/vertical_slash.h"
#include "tests/attention_reference.h"

namespace sparsering {
namespace {

constexpr int kBlock = 128;
constexpr int64_t kSinks = 64;
constexpr int64_t kTailBlocks = 4;  // the reference's keys: the sinks and these last blocks

struct Shape {
  int64_t length, heads, kv_heads, dim;
};

double relative_error(const at::Tensor& got, const at::Tensor& truth) {
  const auto diff = (got.to(at::kDouble).cpu() - truth.to(at::kDouble).cpu()).abs().max();
  return diff.item<double>() / (truth.abs().max().item<double>() + 1e-12);
}

bool has_nan(const at::Tensor& t) { return at::isnan(t).any().item<bool>(); }

// The band + sinks pattern over `shape`, forward and both backwards on `options`' device and
// dtype, against the fp64 reference of the tail.
void check_tail(const Shape& shape, const at::TensorOptions& options) {
  const auto device = at::TensorOptions().device(options.device());
  const int64_t length = shape.length, heads = shape.heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.dim));
  at::manual_seed(31);
  const auto q = at::randn({1, length, heads, shape.dim}, options);
  const auto k = at::randn({1, length, shape.kv_heads, shape.dim}, options);
  const auto v = at::randn({1, length, shape.kv_heads, shape.dim}, options);
  const auto dout = at::randn({1, length, heads, shape.dim}, options);

  // The pattern, written from its definition: sink columns [0, 64), block diagonals 0 and 1.
  const int64_t blocks = length / kBlock;
  kernels::VerticalSlashPattern pattern;
  pattern.block_size = kBlock;
  pattern.sequence_length = length;
  pattern.columns = at::arange(kSinks, device.dtype(at::kLong)).repeat({heads, 1});
  pattern.block_diagonals = at::zeros({heads, blocks}, device.dtype(at::kBool));
  pattern.block_diagonals.narrow(1, 0, 2).fill_(true);
  const auto block_ids = at::arange(blocks, device.dtype(at::kInt));
  const kernels::ShardBlocks shard{block_ids, block_ids, at::Tensor()};
  const auto index = kernels::build_sparse_index(pattern, shard, 1, shape.kv_heads,
                                                 kernels::Transpose::kBlocksAndColumns);

  {
    // Poison: both NaN blocks held at once and freed together, so the caching allocator hands
    // them to the forward's out and lse (a GPU's; the CPU allocator gives no such promise).
    const auto out_poison = at::full(q.sizes(), NAN, options);
    const auto lse_poison = at::full({1, heads, length}, NAN, device.dtype(at::kFloat));
  }
  const auto forward = kernels::sparse_attention_forward(q, k, v, shard, index, scale);
  ASSERT_FALSE(has_nan(forward.out));
  ASSERT_FALSE(has_nan(forward.lse));
  const auto delta = kernels::attention_delta(dout, forward.out);

  // Reference: the last kTailBlocks - 1 query blocks (their band lies in the tail) against the
  // sinks and the tail, in fp64 with autograd.
  const int64_t tail = kTailBlocks * kBlock, queries = tail - kBlock;
  const auto tail_keys = at::cat({at::arange(kSinks), at::arange(length - tail, length)});
  const auto query_positions = at::arange(length - queries, length);
  auto q64 = q.narrow(1, length - queries, queries).cpu().to(at::kDouble).requires_grad_(true);
  const auto keys_here = tail_keys.to(options.device());
  auto k64 = k.index_select(1, keys_here).cpu().to(at::kDouble).requires_grad_(true);
  auto v64 = v.index_select(1, keys_here).cpu().to(at::kDouble).requires_grad_(true);
  const auto q_block = at::div(query_positions, kBlock, "floor").unsqueeze(1);
  const auto k_block = at::div(tail_keys, kBlock, "floor").unsqueeze(0);
  const auto causal = tail_keys.unsqueeze(0) <= query_positions.unsqueeze(1);
  const auto band = (q_block - k_block).le(1);
  const auto visible = causal.logical_and(band.logical_or(tail_keys.lt(kSinks).unsqueeze(0)));
  const auto mask = visible.unsqueeze(0).unsqueeze(0).expand({1, heads, queries, tail + kSinks});
  auto [ref_out, ref_lse] = testing::reference_attention(q64, k64, v64, mask, scale);
  const auto dout64 = dout.narrow(1, length - queries, queries).cpu().to(at::kDouble);
  (ref_out * dout64).sum().backward();

  EXPECT_LT(relative_error(forward.out.narrow(1, length - queries, queries), ref_out), 0.02);
  EXPECT_LT(relative_error(forward.lse.narrow(2, length - queries, queries), ref_lse), 1e-3);

  for (bool deterministic : {false, true}) {
    SCOPED_TRACE(deterministic ? "deterministic" : "atomic");
    auto dq = at::zeros(q.sizes(), device.dtype(at::kFloat));
    auto dk = at::zeros(k.sizes(), device.dtype(at::kFloat));
    auto dv = at::zeros(v.sizes(), device.dtype(at::kFloat));
    kernels::sparse_attention_backward(dout, q, k, v, forward.out, forward.lse, delta, shard, index,
                                       scale, deterministic, dq, dk, dv);
    EXPECT_FALSE(has_nan(dq));
    EXPECT_FALSE(has_nan(dk));
    EXPECT_FALSE(has_nan(dv));
    EXPECT_LT(relative_error(dq.narrow(1, length - queries, queries), q64.grad()), 0.03);
    // Keys of the last two blocks: every query that sees them is among the reference's.
    const int64_t last = 2 * kBlock, offset = kSinks + tail - last;
    EXPECT_LT(relative_error(dk.narrow(1, length - last, last), k64.grad().narrow(1, offset, last)),
              0.03);
    EXPECT_LT(relative_error(dv.narrow(1, length - last, last), v64.grad().narrow(1, offset, last)),
              0.03);
  }
}

TEST(LargeOffsetsGpu, HalfAMillionTokensOf32HeadsMatchTheTailReference) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const Shape shape{512 * 1024 + 8 * kBlock, 32, 8, 128};
  ASSERT_GT(shape.length * shape.heads * shape.dim, int64_t{1} << 31);  // q: past int32
  check_tail(shape, at::TensorOptions().device(at::kCUDA).dtype(at::kBFloat16));
}

// The same checks through the CPU twin at a small shape: the reference's construction, on any
// machine.
TEST(LargeOffsetsGpu, TheTailReferenceHoldsForTheCpuTwin) {
  check_tail({4 * 1024, 2, 1, 32}, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace
}  // namespace sparsering

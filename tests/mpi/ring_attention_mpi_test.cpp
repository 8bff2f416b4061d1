// Ring attention on 2, 4 and 8 MPI ranks equals single-process attention with the same global
// mask: outputs and the gradients of q, k and v, for every layout, dense and sparse, flat and
// hierarchical rings, with and without document masking (random document boundaries per
// sequence), and for every head-parallel split u x (ranks / u) with GQA ratios 1, 4 and 8. Every
// rank builds the same global inputs from one seed and checks its own shard; comparisons are
// non-fatal so no rank leaves a collective early.
//
// With SPARSERING_TEST_DEVICE=cuda (launch/gpu_check.sh on the GPU machine) the same cases run on
// one GPU per rank: bf16 CUDA kernels, K/V travelling over NCCL, tolerances of bf16.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>
#ifdef SPARSERING_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <torch/cuda.h>
#endif

#include "parallel/process_groups.h"
#include "parallel/ring_attention.h"
#include "tests/attention_reference.h"

namespace sparsering {
namespace {

using config::LayoutKind;

struct RingCase {
  LayoutKind layout;
  bool sparse;
  int inner;              // 0 = flat ring
  bool documents;         // document masking
  bool cudnn = false;     // dense pattern's plain steps through cuDNN (GPU only)
  int head_parallel = 1;  // u: ranks exchanging heads; the ring runs over ranks / u
  int64_t heads = 4, kv_heads = 2;
};

std::string case_name(const RingCase& c) {
  return std::string(parallel::layout_name(c.layout)) + (c.sparse ? "/sparse" : "/dense") +
         (c.inner ? "/hierarchical-inner" + std::to_string(c.inner) : "/flat") +
         (c.documents ? "/documents" : "") + (c.cudnn ? "/cudnn" : "") + "/heads" +
         std::to_string(c.heads) + "-kv" + std::to_string(c.kv_heads) + "/u" +
         std::to_string(c.head_parallel);
}

// Random document starts of each sequence (the same on every rank): a few cuts anywhere, one
// inside the first block, and a one-token document.
std::vector<std::vector<int64_t>> random_documents(int64_t batch, int64_t length, int block) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(77);
  std::vector<std::vector<int64_t>> documents;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t single = at::randint(1, length - 1, {1}, generator).item<int64_t>();
    std::vector<int64_t> starts = {0, block / 2, single, single + 1};
    const auto cuts = at::randint(1, length, {static_cast<int64_t>(3 + 2 * b)}, generator);
    for (int64_t i = 0; i < cuts.numel(); ++i) starts.push_back(cuts[i].item<int64_t>());
    std::sort(starts.begin(), starts.end());
    starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
    documents.push_back(starts);
  }
  return documents;
}

// CPU (fp32, CPU twins, MPI) or one GPU per rank (bf16, CUDA kernels, NCCL).
struct TestDevice {
  bool gpu = false;
  at::Device device = at::kCPU;
  at::ScalarType type = at::kFloat;
  int block = 16;
  int64_t dim = 16;
  // Largest error allowed, relative to the reference's largest magnitude for bf16.
  double tolerance(const at::Tensor& reference) const {
    return gpu ? 3e-2 * reference.abs().max().item<double>() : 2e-5;
  }
};

TestDevice test_device() {
  TestDevice d;
  const char* requested = std::getenv("SPARSERING_TEST_DEVICE");
  if (requested == nullptr || std::string(requested) != "cuda") return d;
#ifdef SPARSERING_WITH_CUDA
  if (!torch::cuda::is_available()) throw std::runtime_error("SPARSERING_TEST_DEVICE=cuda: no GPU");
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const auto index = static_cast<c10::DeviceIndex>(rank % torch::cuda::device_count());
  c10::cuda::set_device(index);
  d.gpu = true;
  d.device = at::Device(at::kCUDA, index);
  d.type = at::kBFloat16;
  d.block = 64;
  d.dim = 64;
  return d;
#else
  throw std::runtime_error("SPARSERING_TEST_DEVICE=cuda but the build has no CUDA");
#endif
}

void run_case(const RingCase& c) {
  SCOPED_TRACE(case_name(c));
  int world = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const TestDevice device = test_device();
  const int64_t batch = 2, heads = c.heads, kv_heads = c.kv_heads, dim = device.dim;
  const int block = device.block;
  const int64_t blocks = 4 * world, length = blocks * block;
  const double scale = 1.0 / std::sqrt(static_cast<double>(dim));

  torch::manual_seed(1234);  // identical global inputs on every rank
  // Inputs rounded to the test's dtype, so the fp64 reference sees exactly what the ring sees.
  auto input = [&](at::IntArrayRef shape) {
    return at::randn(shape).to(device.type).to(at::kFloat);
  };
  const auto q = input({batch, length, heads, dim});
  const auto k = input({batch, length, kv_heads, dim});
  const auto v = input({batch, length, kv_heads, dim});
  const auto dout = input({batch, length, heads, dim});

  // The job's own groups: head groups of u consecutive ranks, the ring over the rest, flat or
  // hierarchical.
  parallel::ProcessGroups mesh({1, world, c.inner, c.head_parallel}, device.gpu);
  const parallel::RingGroups groups = mesh.ring_groups();
  parallel::TokenLayout layout(c.layout, blocks, block, world);
  parallel::RingAttentionConfig config;
  config.sparse = c.sparse;
  config.num_columns = 6 * block / 16;
  // Few diagonals whatever the block size: one touches up to two of the 4 x world block diagonals.
  config.num_diagonals = 3;
  config.sink_tokens = 4 * block / 16;
  config.local_tokens = 8 * block / 16;
  config.estimation_queries = 16;
  config.cudnn_dense = c.cudnn;
  parallel::RingAttention ring(config, groups, layout);

  auto local = [&](const at::Tensor& t) {
    return layout.shard(t, rank).to(device.device, device.type).contiguous().requires_grad_(true);
  };
  auto q_local = local(q), k_local = local(k), v_local = local(v);
  // Document masking: this rank's queries' key starts, in its layout order.
  const auto documents = random_documents(batch, length, block);
  at::Tensor key_starts;
  if (c.documents) {
    std::vector<at::Tensor> per_sequence;
    for (const auto& starts : documents) {
      per_sequence.push_back(
          testing::document_key_starts(starts, length).index_select(0, layout.positions_of(rank)));
    }
    key_starts = at::stack(per_sequence).to(device.device);
  }
  auto out =
      ring.forward(q_local, k_local, v_local, /*estimate=*/true, /*dense=*/false, key_starts);
  (out * local(dout).detach()).sum().backward();

  // The reference uses the same pattern over the whole sequence, on one process: with head
  // parallelism every head group's pattern, gathered in head order.
  auto pattern = c.sparse ? ring.pattern() : kernels::dense_pattern(heads, length, block, at::kCPU);
  if (c.sparse && groups.heads != nullptr) {
    auto gather = [&](const at::Tensor& part) {
      return groups.heads->all_gather(part.contiguous()).flatten(0, 1);
    };
    // Groups may select different numbers of columns: pad to the widest with -1 (no column).
    auto width = at::tensor({pattern.columns.size(1)}, at::kLong);
    groups.heads->all_reduce(width, parallel::ReduceOp::kMax);
    const int64_t pad = width.item<int64_t>() - pattern.columns.size(1);
    pattern.columns = gather(at::constant_pad_nd(pattern.columns.cpu(), {0, pad}, -1));
    pattern.block_diagonals = gather(pattern.block_diagonals.to(at::kByte)).to(at::kBool);
  }
  pattern.columns = pattern.columns.cpu();
  pattern.block_diagonals = pattern.block_diagonals.cpu();
  auto mask = testing::global_pattern_mask(pattern).unsqueeze(0);
  if (c.documents) {
    std::vector<at::Tensor> per_sequence;
    for (const auto& starts : documents) {
      per_sequence.push_back(
          mask[0].logical_and(testing::same_document_mask(starts, length).unsqueeze(0)));
    }
    mask = at::stack(per_sequence);
  }
  auto q64 = q.to(at::kDouble).requires_grad_(true);
  auto k64 = k.to(at::kDouble).requires_grad_(true);
  auto v64 = v.to(at::kDouble).requires_grad_(true);
  auto [ref_out, ref_lse] = testing::reference_attention(q64, k64, v64, mask, scale);
  (ref_out * dout.to(at::kDouble)).sum().backward();

  auto expect_close = [&](const at::Tensor& got, const at::Tensor& reference, const char* what) {
    const auto truth = layout.shard(reference, rank);
    EXPECT_TRUE(at::isfinite(got).all().item<bool>()) << what;
    EXPECT_LT(testing::max_abs_diff(got, truth), device.tolerance(truth)) << what;
  };
  expect_close(out, ref_out, "out");
  expect_close(q_local.grad(), q64.grad(), "dq");
  expect_close(k_local.grad(), k64.grad(), "dk");
  expect_close(v_local.grad(), v64.grad(), "dv");

  if (c.sparse && !device.gpu) {
    // The distributed estimate equals the single-process one on the whole sequence.
    const auto positions = at::arange(length, at::kLong);
    const auto q_positions = positions.slice(0, length - config.estimation_queries);
    const auto logits = kernels::sample_logits(q.slice(1, length - config.estimation_queries),
                                               q_positions, k, positions, scale);
    const auto mass =
        kernels::attention_mass(at::softmax(logits, -1), q_positions, positions, length);
    const auto single = kernels::select_pattern(mass, config.num_columns, config.num_diagonals,
                                                config.sink_tokens, config.local_tokens, block);
    EXPECT_TRUE(single.columns.equal(pattern.columns));
    EXPECT_TRUE(single.block_diagonals.equal(pattern.block_diagonals));
  }
  if (c.sparse) {
    // The pattern is sparse: fewer attended pairs than the dense ring over all ranks.
    auto work = at::tensor({ring.stats().attended_pairs, ring.stats().dense_pairs}, at::kLong);
    MPI_Allreduce(MPI_IN_PLACE, work.data_ptr(), 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_LT(work[0].item<int64_t>(), work[1].item<int64_t>());
  }
  if (c.layout == LayoutKind::kContiguous && rank == 0 && world > c.head_parallel) {
    // Rank 0 holds the first blocks: every other shard lies after all its queries.
    EXPECT_EQ(ring.stats().skipped_shards, world / c.head_parallel - 1);
  }
}

TEST(RingAttention, EqualsSingleProcessAttentionForEveryLayoutAndRing) {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  std::vector<int> inner_sizes = {0};
  for (int inner = 2; inner < world; inner *= 2) inner_sizes.push_back(inner);
  for (LayoutKind layout : {LayoutKind::kContiguous, LayoutKind::kZigzag, LayoutKind::kBalanced}) {
    for (bool sparse : {false, true}) {
      for (int inner : inner_sizes) {
        for (bool documents : {false, true}) {
          run_case({layout, sparse, inner, documents});
          // cuDNN runs the plain parts of dense steps without documents, on the GPU.
          if (test_device().gpu && !sparse && !documents) {
            run_case({layout, sparse, inner, documents, /*cudnn=*/true});
          }
        }
      }
    }
  }
}

TEST(RingAttention, HeadParallelSplitsEqualSingleProcessAttention) {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  // Every split u x r of the ranks with u > 1; GQA ratios 1, 4 and 8 (8 query heads, so u = 8
  // divides them); kv heads 1 and 2 are not divisible by every u: repeated before the exchange.
  for (int u = 2; u <= world; u *= 2) {
    for (int64_t kv_heads : {8, 2, 1}) {
      for (bool sparse : {false, true}) {
        // Document masks with GQA ratio 4 only (8 ranks on 2 CI cores make every case count).
        for (bool documents : {false, true}) {
          if (documents && kv_heads != 2) continue;
          RingCase c{LayoutKind::kBalanced, sparse, /*inner=*/0, documents};
          c.head_parallel = u;
          c.heads = 8;
          c.kv_heads = kv_heads;
          run_case(c);
        }
      }
    }
    // Other layouts and the hierarchical ring over the remaining ranks.
    for (LayoutKind layout : {LayoutKind::kContiguous, LayoutKind::kZigzag}) {
      RingCase c{layout, /*sparse=*/true, /*inner=*/0, /*documents=*/true};
      c.head_parallel = u;
      c.heads = 8;
      run_case(c);
    }
    if (world / u >= 4) {
      RingCase c{LayoutKind::kBalanced, /*sparse=*/true, /*inner=*/2, /*documents=*/false};
      c.head_parallel = u;
      c.heads = 8;
      run_case(c);
    }
  }
}

TEST(RingAttention, ReusesThePatternWhenNotReestimating) {
  if (test_device().gpu) GTEST_SKIP() << "device-independent bookkeeping: checked on CPU";
  int world = 1, rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  parallel::ProcessGroups mesh({1, world, 0, 1}, /*use_nccl=*/false);
  const parallel::RingGroups groups = mesh.ring_groups();
  const int block = 16;
  parallel::TokenLayout layout(LayoutKind::kBalanced, 4 * world, block, world);
  parallel::RingAttentionConfig config;
  config.sparse = true;
  config.num_columns = 4;
  config.num_diagonals = 4;
  config.sink_tokens = 1;
  config.local_tokens = 1;
  config.estimation_queries = 8;
  parallel::RingAttention ring(config, groups, layout);
  torch::manual_seed(7);
  const int64_t local = layout.blocks_per_rank() * block;
  const auto q1 = at::randn({1, local, 2, 16}), k1 = at::randn({1, local, 2, 16});
  ring.forward(q1, k1, k1, /*estimate=*/true, /*dense=*/false);
  const int64_t first = ring.stats().attended_pairs;
  // Different inputs without re-estimation: the same pattern, so the same work.
  const auto q2 = at::randn({1, local, 2, 16}) * 10, k2 = at::randn({1, local, 2, 16});
  ring.forward(q2, k2, k2, /*estimate=*/false, /*dense=*/false);
  EXPECT_EQ(ring.stats().attended_pairs, first);
  // Dense warm-up computes every causal block whatever the pattern.
  ring.forward(q2, k2, k2, /*estimate=*/false, /*dense=*/true);
  EXPECT_EQ(ring.stats().attended_pairs, ring.stats().dense_pairs);
}

}  // namespace
}  // namespace sparsering

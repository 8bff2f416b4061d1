// Communicator collectives and the bucketed gradient sync on 2, 4 and 8 MPI ranks, checked
// against values every rank can compute for itself (each rank's data comes from its rank as seed).
#include <gtest/gtest.h>

#include "parallel/communicator.h"
#include "parallel/gradient_sync.h"
#include "parallel/process_groups.h"

namespace sparsering {
namespace {

at::Tensor data_of(int rank, at::IntArrayRef shape) {
  at::manual_seed(100 + rank);
  return at::randn(shape);
}

class CommunicatorTest : public ::testing::Test {
 protected:
  parallel::Communicator world_{"world", MPI_COMM_WORLD, false};
  int rank() const { return world_.rank(); }
  int size() const { return world_.size(); }
};

TEST_F(CommunicatorTest, AllReduceSumAndMax) {
  auto sum = data_of(rank(), {5, 3});
  auto max = sum.clone();
  world_.all_reduce(sum, parallel::ReduceOp::kSum);
  world_.all_reduce(max, parallel::ReduceOp::kMax);
  auto expected_sum = at::zeros({5, 3});
  auto expected_max = at::full({5, 3}, -INFINITY);
  for (int r = 0; r < size(); ++r) {
    expected_sum += data_of(r, {5, 3});
    expected_max = at::maximum(expected_max, data_of(r, {5, 3}));
  }
  EXPECT_TRUE(at::allclose(sum, expected_sum, 1e-6, 1e-6));
  EXPECT_TRUE(max.equal(expected_max));
}

TEST_F(CommunicatorTest, BroadcastGatherScatter) {
  auto tensor = data_of(rank(), {4});
  world_.broadcast(tensor, size() - 1);
  EXPECT_TRUE(tensor.equal(data_of(size() - 1, {4})));

  const auto gathered = world_.all_gather(data_of(rank(), {2, 3}));
  ASSERT_EQ(gathered.size(0), size());
  for (int r = 0; r < size(); ++r) EXPECT_TRUE(gathered[r].equal(data_of(r, {2, 3})));

  const auto mine = world_.reduce_scatter(data_of(rank(), {2 * size(), 3}));
  auto total = at::zeros({2 * size(), 3});
  for (int r = 0; r < size(); ++r) total += data_of(r, {2 * size(), 3});
  EXPECT_TRUE(at::allclose(mine, total.slice(0, 2 * rank(), 2 * rank() + 2), 1e-6, 1e-6));
}

TEST_F(CommunicatorTest, PairedTransfersAroundTheRing) {
  const int next = (rank() + 1) % size(), prev = (rank() + size() - 1) % size();
  auto a = data_of(rank(), {8}), b = data_of(rank(), {3, 3}).to(at::kBFloat16);
  auto got_a = at::empty_like(a), got_b = at::empty_like(b);
  world_.start_transfers({{a, next}, {b, next}}, {{got_a, prev}, {got_b, prev}})->wait();
  EXPECT_TRUE(got_a.equal(data_of(prev, {8})));
  EXPECT_TRUE(got_b.equal(data_of(prev, {3, 3}).to(at::kBFloat16)));
}

TEST_F(CommunicatorTest, RejectsNonContiguousTensors) {
  auto t = at::zeros({4, 4}).t();
  EXPECT_THROW(world_.all_reduce(t), std::runtime_error);
}

TEST_F(CommunicatorTest, GradientSyncSumsEveryGradientInSmallBuckets) {
  std::vector<at::Tensor> params = {at::zeros({7, 5}), at::zeros({33}), at::zeros({4, 4, 2})};
  auto grads_of = [&](int r) {
    std::vector<at::Tensor> grads;
    for (size_t i = 0; i < params.size(); ++i)
      grads.push_back(data_of(r * 10 + i, params[i].sizes()));
    return grads;
  };
  const auto mine = grads_of(rank());
  for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = mine[i].clone();
  parallel::GradientSync sync(world_, params, /*bucket_bytes=*/160);
  EXPECT_GT(sync.num_buckets(), 1);
  sync.synchronize();
  for (size_t i = 0; i < params.size(); ++i) {
    auto expected = at::zeros_like(params[i]);
    for (int r = 0; r < size(); ++r) expected += grads_of(r)[i];
    EXPECT_TRUE(at::allclose(params[i].grad(), expected, 1e-5, 1e-5)) << "parameter " << i;
  }
}

TEST(ProcessGroups, MeshSplitsWorldIntoDataAndContextParallelGroups) {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  const int cp = world >= 4 ? world / 2 : world;
  parallel::ProcessGroups groups({world / cp, cp, cp >= 4 ? 2 : 0}, /*use_nccl=*/false);
  EXPECT_EQ(groups.cp().size(), cp);
  EXPECT_EQ(groups.dp().size(), world / cp);
  EXPECT_EQ(groups.world_rank(), groups.dp_rank() * cp + groups.cp_rank());
  const auto ring = groups.ring_groups();
  const int outer = ring.outer ? ring.outer->size() : 1;
  EXPECT_EQ(ring.inner->size() * outer, cp);
  EXPECT_EQ(groups.cp_rank(),
            (ring.outer ? ring.outer->rank() : 0) * ring.inner->size() + ring.inner->rank());
  EXPECT_THROW(parallel::ProcessGroups({world + 1, 1, 0}, false), std::invalid_argument);
}

}  // namespace
}  // namespace sparsering

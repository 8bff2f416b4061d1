// The NCCL all-gather started on the communication stream (stage 3's layer prefetch): its result
// after wait() equals the blocking all-gather, and work queued on the compute stream before the
// start is what it reads.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>

#include "parallel/communicator.h"

namespace sparsering {
namespace {

TEST(CommunicatorGpu, StartedAllGatherEqualsTheBlockingOne) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  parallel::Communicator world("world", MPI_COMM_WORLD, /*use_nccl=*/true);
  const auto options = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  at::manual_seed(3);
  auto local = at::randn({1 << 20}, options);
  const auto expected = world.all_gather(local.mul(2)).reshape(-1);
  auto source = local.mul(2);  // queued on the compute stream just before the start
  auto gathered = at::full({world.size() * local.numel()}, std::nan(""), options);
  auto pending = world.start_all_gather(source, gathered);
  pending->wait();
  EXPECT_TRUE(gathered.equal(expected));
  EXPECT_THROW(world.start_all_gather(source, at::empty({3}, options)), std::runtime_error);
}

}  // namespace
}  // namespace sparsering

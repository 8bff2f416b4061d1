#include "parallel/process_groups.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "parallel/checks.h"

namespace sparsering::parallel {
namespace {

std::unique_ptr<Communicator> split(const std::string& name, int color, int key, bool use_nccl) {
  MPI_Comm comm;
  SPARSERING_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, color, key, &comm));
  auto communicator = std::make_unique<Communicator>(name, comm, use_nccl);
  SPARSERING_MPI_CHECK(MPI_Comm_free(&comm));
  return communicator;
}

}  // namespace

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  SPARSERING_MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
  SPARSERING_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank_));
  SPARSERING_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void MpiSession::abort(int exit_code) {
  MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::_Exit(exit_code);
}

int ProcessGroups::local_rank() {
  MPI_Comm node;
  SPARSERING_MPI_CHECK(
      MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  int rank = 0;
  SPARSERING_MPI_CHECK(MPI_Comm_rank(node, &rank));
  SPARSERING_MPI_CHECK(MPI_Comm_free(&node));
  return rank;
}

ProcessGroups::ProcessGroups(MeshShape shape, bool use_nccl) : shape_(shape) {
  int world_rank = 0, world_size = 1;
  SPARSERING_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world_rank));
  SPARSERING_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size));
  const int cp = shape.context_parallel, dp = shape.data_parallel;
  if (cp * dp != world_size) {
    throw std::invalid_argument("mesh dp " + std::to_string(dp) + " x cp " + std::to_string(cp) +
                                " does not match the " + std::to_string(world_size) + " ranks");
  }
  const int u = shape.head_parallel;
  if (u < 1 || cp % u != 0) {
    throw std::invalid_argument("head-parallel size " + std::to_string(u) + " does not divide cp " +
                                std::to_string(cp));
  }
  const int ring = cp / u;
  const int inner_size = shape.intra_ring == 0 ? ring : shape.intra_ring;
  if (ring % inner_size != 0) {
    throw std::invalid_argument("inner ring size " + std::to_string(inner_size) +
                                " does not divide the ring's " + std::to_string(ring) + " ranks");
  }
  const int dp_rank = world_rank / cp, cp_rank = world_rank % cp;
  world_ = std::make_unique<Communicator>("world", MPI_COMM_WORLD, use_nccl);
  dp_ = split("dp", cp_rank, dp_rank, use_nccl);
  cp_ = split("cp", dp_rank, cp_rank, use_nccl);
  // Head groups are runs of u consecutive cp ranks; the ring links the ranks with the same
  // position in their head group (ring rank = cp rank / u).
  const int head_group = cp_rank / u, head_rank = cp_rank % u;
  if (u > 1) {
    heads_ = split("cp-heads", dp_rank * cp + head_group, head_rank, use_nccl);
    ring_ = split("cp-ring", dp_rank * cp + head_rank, head_group, use_nccl);
  }
  if (inner_size == ring) return;  // flat ring: the inner ring is the whole ring
  const int node = head_group / inner_size, local = head_group % inner_size;
  inner_ = split("cp-inner", (dp_rank * u + head_rank) * ring + node, local, use_nccl);
  outer_ = split("cp-outer", (dp_rank * u + head_rank) * ring + local, node, use_nccl);
}

RingGroups ProcessGroups::ring_groups() {
  Communicator* ring = ring_ ? ring_.get() : cp_.get();
  if (!inner_) return {ring, ring, nullptr, heads_.get()};
  return {ring, inner_.get(), outer_.get(), heads_.get()};
}

}  // namespace sparsering::parallel

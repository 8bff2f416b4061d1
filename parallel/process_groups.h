// The job's ranks as a device mesh, data-parallel x context-parallel, with the context-parallel
// group split into intra-node (inner) and inter-node (outer) rings for the hierarchical ring.
// Ranks are numbered world = dp_rank x cp + cp_rank, so a context-parallel group is a run of
// consecutive ranks (one node when cp <= GPUs per node, as mpirun places ranks by slot).
#pragma once

#include <memory>

#include "parallel/communicator.h"
#include "parallel/ring_attention.h"

namespace sparsering::parallel {

// MPI for the process's lifetime. A failure on one rank must end the whole job, never hang the
// others: abort() takes every rank down with MPI_Abort.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  int world_rank() const { return world_rank_; }
  int world_size() const { return world_size_; }
  [[noreturn]] static void abort(int exit_code);

 private:
  int world_rank_ = 0, world_size_ = 1;
};

struct MeshShape {
  int data_parallel = 1;
  int context_parallel = 1;
  int intra_ring = 0;     // ring ranks of the inner ring; 0 = flat ring
  int head_parallel = 1;  // u: consecutive cp ranks that exchange heads; the ring has cp / u
};

class ProcessGroups {
 public:
  // Collective over MPI_COMM_WORLD. With `use_nccl` every group also gets an NCCL communicator
  // on this rank's GPU (local rank modulo the visible devices), which must be current already.
  ProcessGroups(MeshShape shape, bool use_nccl);

  int world_rank() const { return world_->rank(); }
  int world_size() const { return world_->size(); }
  int dp_rank() const { return dp_->rank(); }
  int cp_rank() const { return cp_->rank(); }
  const MeshShape& shape() const { return shape_; }

  Communicator& world() { return *world_; }
  Communicator& dp() { return *dp_; }
  Communicator& cp() { return *cp_; }
  RingGroups ring_groups();

  // Rank of this process among the ranks of its node (shared-memory domain).
  static int local_rank();

 private:
  MeshShape shape_;
  std::unique_ptr<Communicator> world_, dp_, cp_, heads_, ring_, inner_, outer_;
};

}  // namespace sparsering::parallel

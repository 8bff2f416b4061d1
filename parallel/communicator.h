// One communicator interface for a group of ranks, two implementations picked per tensor: NCCL for
// CUDA tensors (on the communicator's own stream, ordered with events, no host synchronisation)
// and MPI for CPU tensors. So the ring algorithm is written once and runs in CI on MPI ranks.
#pragma once

#include <ATen/ATen.h>
#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

namespace sparsering::parallel {

enum class ReduceOp { kSum, kMax };

// A point-to-point transfer with a peer, by its rank in the group.
struct Transfer {
  at::Tensor tensor;
  int peer;
};

// Sends and receives in flight. wait() makes their results usable: on CPU it blocks; on CUDA it
// makes the current stream wait for the communication stream.
class PendingTransfers {
 public:
  virtual ~PendingTransfers() = default;
  virtual void wait() = 0;
};

class NcclBackend;

class Communicator {
 public:
  // `comm` is duplicated, so the caller keeps ownership of its handle. With `use_nccl` an NCCL
  // communicator over the same ranks is created too (collective: every rank of comm calls it).
  Communicator(std::string name, MPI_Comm comm, bool use_nccl);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  const std::string& name() const { return name_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm mpi_comm() const { return comm_; }

  void all_reduce(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum);
  void broadcast(at::Tensor& tensor, int root);
  // Every rank's `tensor` stacked along a new leading dimension of size size().
  at::Tensor all_gather(const at::Tensor& tensor);
  // Sums `tensor` over ranks and returns this rank's 1/size() slice of dimension 0.
  at::Tensor reduce_scatter(const at::Tensor& tensor);
  // Starts an all-gather of every rank's `tensor` into `gathered` (size() x tensor's elements,
  // the ranks' in order) without waiting for it: on NCCL on the communication stream, after what
  // the current stream has issued so far; on MPI as a non-blocking collective. `gathered` may be
  // read after wait(). Used to fetch the next layer's weights while this one computes.
  std::unique_ptr<PendingTransfers> start_all_gather(const at::Tensor& tensor,
                                                     const at::Tensor& gathered);
  // Starts all sends and receives together (paired sends/recvs cannot deadlock). The i-th entry
  // of one rank's sends pairs with the i-th entry of its peer's receives.
  std::unique_ptr<PendingTransfers> start_transfers(const std::vector<Transfer>& sends,
                                                    const std::vector<Transfer>& receives);
  void barrier();

 private:
  void check_tensor(const at::Tensor& tensor, const char* operation) const;
  bool on_nccl(const at::Tensor& tensor) const;

  std::string name_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::unique_ptr<NcclBackend> nccl_;
};

}  // namespace sparsering::parallel

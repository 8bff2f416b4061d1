// NCCL implementation of the Communicator operations for CUDA tensors. Collectives run on the
// current stream; point-to-point transfers and started all-gathers run on the communicator's own
// stream, ordered after the current stream by an event, so they overlap compute.
#pragma once

#include <ATen/ATen.h>
#include <mpi.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/communicator.h"

namespace sparsering::parallel {

class NcclBackend {
 public:
  // Collective over `comm`: rank 0 creates the NCCL unique id and broadcasts it over MPI.
  NcclBackend(const std::string& name, MPI_Comm comm, int rank, int size);
  ~NcclBackend();

  void all_reduce(at::Tensor& tensor, ReduceOp op);
  void broadcast(at::Tensor& tensor, int root);
  void all_gather(const at::Tensor& tensor, at::Tensor& gathered);
  void reduce_scatter(const at::Tensor& tensor, at::Tensor& out);
  // The all-gather on the communicator's own stream, ordered after the current stream.
  std::unique_ptr<PendingTransfers> start_all_gather(const at::Tensor& tensor,
                                                     const at::Tensor& gathered);
  std::unique_ptr<PendingTransfers> start_transfers(const std::vector<Transfer>& sends,
                                                    const std::vector<Transfer>& receives);

 private:
  struct State;
  std::unique_ptr<State> state_;
  std::string name_;
};

}  // namespace sparsering::parallel

// Built without CUDA: asking for NCCL is an error that says so.
#include <stdexcept>

#include "parallel/nccl_backend.h"

namespace sparsering::parallel {

struct NcclBackend::State {};

NcclBackend::NcclBackend(const std::string& name, MPI_Comm, int, int) : name_(name) {
  throw std::runtime_error("communicator '" + name +
                           "': NCCL requested but SparseRing was built without CUDA");
}
NcclBackend::~NcclBackend() = default;
void NcclBackend::all_reduce(at::Tensor&, ReduceOp) {}
void NcclBackend::broadcast(at::Tensor&, int) {}
void NcclBackend::all_gather(const at::Tensor&, at::Tensor&) {}
void NcclBackend::reduce_scatter(const at::Tensor&, at::Tensor&) {}
std::unique_ptr<PendingTransfers> NcclBackend::start_all_gather(const at::Tensor&,
                                                                const at::Tensor&) {
  return nullptr;
}
std::unique_ptr<PendingTransfers> NcclBackend::start_transfers(const std::vector<Transfer>&,
                                                               const std::vector<Transfer>&) {
  return nullptr;
}

}  // namespace sparsering::parallel

// Communicator: argument checks, the MPI implementation for CPU tensors, dispatch to NCCL.
#include "parallel/communicator.h"

#include "parallel/checks.h"
#include "parallel/nccl_backend.h"

namespace sparsering::parallel {
namespace {

MPI_Datatype mpi_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return MPI_FLOAT;
    case at::kDouble:
      return MPI_DOUBLE;
    case at::kInt:
      return MPI_INT32_T;
    case at::kLong:
      return MPI_INT64_T;
    case at::kBool:
    case at::kByte:
      return MPI_UINT8_T;
    case at::kBFloat16:
    case at::kHalf:
      return MPI_UINT16_T;  // moved as raw bits; reductions need a float type
    default:
      throw std::runtime_error(std::string("MPI communicator: unsupported dtype ") +
                               c10::toString(type));
  }
}

bool reducible_on_mpi(at::ScalarType type) {
  return type == at::kFloat || type == at::kDouble || type == at::kInt || type == at::kLong;
}

class MpiPendingTransfers : public PendingTransfers {
 public:
  MpiPendingTransfers(std::vector<MPI_Request> requests, std::vector<at::Tensor> keep_alive)
      : requests_(std::move(requests)), keep_alive_(std::move(keep_alive)) {}
  ~MpiPendingTransfers() override {
    // Requests must complete before their buffers go away, even on an error path.
    if (!requests_.empty()) MPI_Waitall(requests_.size(), requests_.data(), MPI_STATUSES_IGNORE);
  }
  void wait() override {
    SPARSERING_MPI_CHECK(MPI_Waitall(requests_.size(), requests_.data(), MPI_STATUSES_IGNORE));
    requests_.clear();
    keep_alive_.clear();
  }

 private:
  std::vector<MPI_Request> requests_;
  std::vector<at::Tensor> keep_alive_;
};

}  // namespace

Communicator::Communicator(std::string name, MPI_Comm comm, bool use_nccl)
    : name_(std::move(name)) {
  SPARSERING_MPI_CHECK(MPI_Comm_dup(comm, &comm_));
  SPARSERING_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  SPARSERING_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  if (use_nccl) nccl_ = std::make_unique<NcclBackend>(name_, comm_, rank_, size_);
}

Communicator::~Communicator() {
  nccl_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void Communicator::check_tensor(const at::Tensor& tensor, const char* operation) const {
  if (!tensor.is_contiguous()) {
    throw std::runtime_error("communicator '" + name_ + "' " + operation +
                             ": tensor must be contiguous");
  }
  if (tensor.is_cuda() && !nccl_) {
    throw std::runtime_error("communicator '" + name_ + "' " + operation +
                             ": CUDA tensor but the group has no NCCL communicator");
  }
}

bool Communicator::on_nccl(const at::Tensor& tensor) const { return tensor.is_cuda(); }

void Communicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  check_tensor(tensor, "all_reduce");
  if (on_nccl(tensor)) return nccl_->all_reduce(tensor, op);
  if (!reducible_on_mpi(tensor.scalar_type())) {
    throw std::runtime_error("communicator '" + name_ +
                             "' all_reduce: CPU reductions need fp32, "
                             "fp64 or integer tensors");
  }
  SPARSERING_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, tensor.data_ptr(), tensor.numel(),
                                     mpi_type(tensor.scalar_type()),
                                     op == ReduceOp::kSum ? MPI_SUM : MPI_MAX, comm_));
}

void Communicator::broadcast(at::Tensor& tensor, int root) {
  check_tensor(tensor, "broadcast");
  if (on_nccl(tensor)) return nccl_->broadcast(tensor, root);
  SPARSERING_MPI_CHECK(
      MPI_Bcast(tensor.data_ptr(), tensor.numel(), mpi_type(tensor.scalar_type()), root, comm_));
}

at::Tensor Communicator::all_gather(const at::Tensor& tensor) {
  check_tensor(tensor, "all_gather");
  std::vector<int64_t> shape = {size_};
  shape.insert(shape.end(), tensor.sizes().begin(), tensor.sizes().end());
  auto gathered = at::empty(shape, tensor.options());
  if (on_nccl(tensor)) {
    nccl_->all_gather(tensor, gathered);
  } else {
    const auto type = mpi_type(tensor.scalar_type());
    SPARSERING_MPI_CHECK(MPI_Allgather(tensor.data_ptr(), tensor.numel(), type, gathered.data_ptr(),
                                       tensor.numel(), type, comm_));
  }
  return gathered;
}

at::Tensor Communicator::reduce_scatter(const at::Tensor& tensor) {
  check_tensor(tensor, "reduce_scatter");
  if (tensor.size(0) % size_ != 0) {
    throw std::runtime_error("communicator '" + name_ + "' reduce_scatter: dimension 0 (" +
                             std::to_string(tensor.size(0)) + ") must divide by the group size");
  }
  auto out = at::empty_like(tensor.slice(0, 0, tensor.size(0) / size_));
  if (on_nccl(tensor)) {
    nccl_->reduce_scatter(tensor, out);
  } else {
    SPARSERING_MPI_CHECK(MPI_Reduce_scatter_block(tensor.data_ptr(), out.data_ptr(), out.numel(),
                                                  mpi_type(tensor.scalar_type()), MPI_SUM, comm_));
  }
  return out;
}

std::unique_ptr<PendingTransfers> Communicator::start_all_gather(const at::Tensor& tensor,
                                                                 const at::Tensor& gathered) {
  check_tensor(tensor, "all_gather");
  check_tensor(gathered, "all_gather");
  if (gathered.numel() != tensor.numel() * size_ || gathered.device() != tensor.device() ||
      gathered.scalar_type() != tensor.scalar_type()) {
    throw std::runtime_error("communicator '" + name_ +
                             "' all_gather: the output must hold size() x the input's elements, "
                             "on its device and in its dtype");
  }
  if (on_nccl(tensor)) return nccl_->start_all_gather(tensor, gathered);
  std::vector<MPI_Request> requests(1);
  const auto type = mpi_type(tensor.scalar_type());
  SPARSERING_MPI_CHECK(MPI_Iallgather(tensor.data_ptr(), tensor.numel(), type, gathered.data_ptr(),
                                      tensor.numel(), type, comm_, &requests[0]));
  return std::make_unique<MpiPendingTransfers>(std::move(requests),
                                               std::vector<at::Tensor>{tensor, gathered});
}

std::unique_ptr<PendingTransfers> Communicator::start_transfers(
    const std::vector<Transfer>& sends, const std::vector<Transfer>& receives) {
  bool any_cuda = false;
  for (const auto* list : {&sends, &receives}) {
    for (const Transfer& t : *list) {
      check_tensor(t.tensor, "send/recv");
      any_cuda = any_cuda || t.tensor.is_cuda();
    }
  }
  if (any_cuda) return nccl_->start_transfers(sends, receives);
  std::vector<MPI_Request> requests;
  std::vector<at::Tensor> keep_alive;
  // Tags separate several transfers between the same pair of ranks (K and V, say).
  for (size_t i = 0; i < receives.size(); ++i) {
    const Transfer& t = receives[i];
    requests.emplace_back();
    SPARSERING_MPI_CHECK(MPI_Irecv(t.tensor.data_ptr(), t.tensor.numel(),
                                   mpi_type(t.tensor.scalar_type()), t.peer, static_cast<int>(i),
                                   comm_, &requests.back()));
    keep_alive.push_back(t.tensor);
  }
  for (size_t i = 0; i < sends.size(); ++i) {
    const Transfer& t = sends[i];
    requests.emplace_back();
    SPARSERING_MPI_CHECK(MPI_Isend(t.tensor.data_ptr(), t.tensor.numel(),
                                   mpi_type(t.tensor.scalar_type()), t.peer, static_cast<int>(i),
                                   comm_, &requests.back()));
    keep_alive.push_back(t.tensor);
  }
  return std::make_unique<MpiPendingTransfers>(std::move(requests), std::move(keep_alive));
}

void Communicator::barrier() { SPARSERING_MPI_CHECK(MPI_Barrier(comm_)); }

}  // namespace sparsering::parallel

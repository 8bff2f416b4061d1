#include "parallel/nccl_backend.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "parallel/checks.h"

namespace sparsering::parallel {
namespace {

ncclDataType_t nccl_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return ncclFloat32;
    case at::kDouble:
      return ncclFloat64;
    case at::kHalf:
      return ncclFloat16;
    case at::kBFloat16:
      return ncclBfloat16;
    case at::kInt:
      return ncclInt32;
    case at::kLong:
      return ncclInt64;
    case at::kBool:
    case at::kByte:
      return ncclUint8;
    default:
      throw std::runtime_error(std::string("NCCL communicator: unsupported dtype ") +
                               c10::toString(type));
  }
}

cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

class NcclPendingTransfers : public PendingTransfers {
 public:
  NcclPendingTransfers(cudaEvent_t done, std::vector<at::Tensor> keep_alive)
      : done_(done), keep_alive_(std::move(keep_alive)) {}
  ~NcclPendingTransfers() override { cudaEventDestroy(done_); }
  void wait() override {
    SPARSERING_CUDA_CHECK(cudaStreamWaitEvent(current_stream(), done_, 0));
    keep_alive_.clear();
  }

 private:
  cudaEvent_t done_;
  std::vector<at::Tensor> keep_alive_;
};

}  // namespace

struct NcclBackend::State {
  ncclComm_t comm = nullptr;
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(/*isHighPriority=*/true);
};

NcclBackend::NcclBackend(const std::string& name, MPI_Comm comm, int rank, int size)
    : state_(std::make_unique<State>()), name_(name) {
  ncclUniqueId id;
  if (rank == 0) SPARSERING_NCCL_CHECK(ncclGetUniqueId(&id));
  SPARSERING_MPI_CHECK(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm));
  SPARSERING_NCCL_CHECK(ncclCommInitRank(&state_->comm, size, id, rank));
}

NcclBackend::~NcclBackend() {
  if (state_ && state_->comm) ncclCommDestroy(state_->comm);
}

void NcclBackend::all_reduce(at::Tensor& tensor, ReduceOp op) {
  SPARSERING_NCCL_CHECK(ncclAllReduce(
      tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_type(tensor.scalar_type()),
      op == ReduceOp::kSum ? ncclSum : ncclMax, state_->comm, current_stream()));
}

void NcclBackend::broadcast(at::Tensor& tensor, int root) {
  SPARSERING_NCCL_CHECK(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), tensor.numel(),
                                      nccl_type(tensor.scalar_type()), root, state_->comm,
                                      current_stream()));
}

void NcclBackend::all_gather(const at::Tensor& tensor, at::Tensor& gathered) {
  SPARSERING_NCCL_CHECK(ncclAllGather(tensor.data_ptr(), gathered.data_ptr(), tensor.numel(),
                                      nccl_type(tensor.scalar_type()), state_->comm,
                                      current_stream()));
}

void NcclBackend::reduce_scatter(const at::Tensor& tensor, at::Tensor& out) {
  SPARSERING_NCCL_CHECK(ncclReduceScatter(tensor.data_ptr(), out.data_ptr(), out.numel(),
                                          nccl_type(tensor.scalar_type()), ncclSum, state_->comm,
                                          current_stream()));
}

std::unique_ptr<PendingTransfers> NcclBackend::start_all_gather(const at::Tensor& tensor,
                                                                const at::Tensor& gathered) {
  cudaStream_t comm_stream = state_->stream.stream();
  // The gather may only read what the compute stream has written so far.
  cudaEvent_t ready, done;
  SPARSERING_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  SPARSERING_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  SPARSERING_CUDA_CHECK(cudaEventRecord(ready, current_stream()));
  SPARSERING_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, ready, 0));
  SPARSERING_CUDA_CHECK(cudaEventDestroy(ready));
  SPARSERING_NCCL_CHECK(ncclAllGather(tensor.data_ptr(), gathered.data_ptr(), tensor.numel(),
                                      nccl_type(tensor.scalar_type()), state_->comm, comm_stream));
  // Neither buffer may be reused by the caching allocator before the gather is done.
  for (const at::Tensor* t : {&tensor, &gathered}) {
    c10::cuda::CUDACachingAllocator::recordStream(t->storage().data_ptr(), state_->stream);
  }
  SPARSERING_CUDA_CHECK(cudaEventRecord(done, comm_stream));
  return std::make_unique<NcclPendingTransfers>(done, std::vector<at::Tensor>{tensor, gathered});
}

std::unique_ptr<PendingTransfers> NcclBackend::start_transfers(
    const std::vector<Transfer>& sends, const std::vector<Transfer>& receives) {
  cudaStream_t comm_stream = state_->stream.stream();
  // The transfers may only read what the compute stream has written so far.
  cudaEvent_t ready, done;
  SPARSERING_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  SPARSERING_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  SPARSERING_CUDA_CHECK(cudaEventRecord(ready, current_stream()));
  SPARSERING_CUDA_CHECK(cudaStreamWaitEvent(comm_stream, ready, 0));
  SPARSERING_CUDA_CHECK(cudaEventDestroy(ready));
  std::vector<at::Tensor> keep_alive;
  SPARSERING_NCCL_CHECK(ncclGroupStart());
  for (const Transfer& t : sends) {
    SPARSERING_NCCL_CHECK(ncclSend(t.tensor.data_ptr(), t.tensor.numel(),
                                   nccl_type(t.tensor.scalar_type()), t.peer, state_->comm,
                                   comm_stream));
    keep_alive.push_back(t.tensor);
  }
  for (const Transfer& t : receives) {
    SPARSERING_NCCL_CHECK(ncclRecv(t.tensor.data_ptr(), t.tensor.numel(),
                                   nccl_type(t.tensor.scalar_type()), t.peer, state_->comm,
                                   comm_stream));
    keep_alive.push_back(t.tensor);
  }
  SPARSERING_NCCL_CHECK(ncclGroupEnd());
  // Memory the comm stream uses must not be reused by the caching allocator before it is done.
  for (const at::Tensor& t : keep_alive) {
    c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), state_->stream);
  }
  SPARSERING_CUDA_CHECK(cudaEventRecord(done, comm_stream));
  return std::make_unique<NcclPendingTransfers>(done, std::move(keep_alive));
}

}  // namespace sparsering::parallel

#include "trainer/state/pinned_host_memory.h"

#include <stdexcept>
#include <string>

#ifdef SPARSERING_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace sparsering::trainer {

at::Tensor exact_pinned_zeros(int64_t numel, at::ScalarType dtype, bool pin) {
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
#ifdef SPARSERING_WITH_CUDA
  if (pin && numel > 0) {
    const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
    void* data = nullptr;
    const cudaError_t status = cudaHostAlloc(&data, bytes, cudaHostAllocDefault);
    if (status != cudaSuccess) {
      cudaGetLastError();  // a failed allocation must not be reported by the next CUDA call
      throw std::runtime_error(
          "cannot page-lock " + std::to_string(bytes >> 20) + " MiB of host memory for the " +
          "offloaded optimizer state (" + cudaGetErrorString(status) +
          "); use more ranks, a higher parallel.zero_stage or a host with more memory");
    }
    auto tensor = at::from_blob(
        data, {numel}, [](void* pointer) { cudaFreeHost(pointer); }, options);
    tensor.zero_();
    return tensor;
  }
#endif
  (void)pin;
  return at::zeros({numel}, options);
}

}  // namespace sparsering::trainer

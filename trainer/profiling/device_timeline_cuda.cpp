#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include "parallel/checks.h"
#include "trainer/profiling/device_timeline.h"

namespace sparsering::trainer::device_timeline {
namespace {

cudaEvent_t as_cuda(Event event) { return static_cast<cudaEvent_t>(event); }

}  // namespace

Event create() {
  cudaEvent_t event = nullptr;
  SPARSERING_CUDA_CHECK(cudaEventCreate(&event));
  return event;
}

void destroy(Event event) {
  // Events the device has not reached yet may be destroyed: CUDA frees them once it does.
  if (event != nullptr) cudaEventDestroy(as_cuda(event));
}

void record(Event event, const c10::Device& device) {
  SPARSERING_CUDA_CHECK(
      cudaEventRecord(as_cuda(event), c10::cuda::getCurrentCUDAStream(device.index())));
}

bool passed(Event event, bool wait) {
  if (wait) {
    SPARSERING_CUDA_CHECK(cudaEventSynchronize(as_cuda(event)));
    return true;
  }
  const cudaError_t status = cudaEventQuery(as_cuda(event));
  if (status == cudaErrorNotReady) {
    // Not an error, but some runtimes also leave it as the last error: clear it so that the next
    // checked CUDA call elsewhere does not report it (as torch's CUDAEvent::query does).
    (void)cudaGetLastError();
    return false;
  }
  SPARSERING_CUDA_CHECK(status);
  return true;
}

double elapsed_ms(Event from, Event to) {
  float ms = 0;
  SPARSERING_CUDA_CHECK(cudaEventElapsedTime(&ms, as_cuda(from), as_cuda(to)));
  return ms;
}

void push_range(const char* name) { nvtxRangePushA(name); }

void pop_range() { nvtxRangePop(); }

int64_t peak_allocated_bytes(const c10::Device& device) {
  const c10::DeviceIndex index = device.has_index() ? device.index() : c10::cuda::current_device();
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
  return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)]
      .peak;
}

}  // namespace sparsering::trainer::device_timeline

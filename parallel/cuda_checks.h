// Checked CUDA and NCCL calls (CUDA builds only), in the style of parallel/checks.h.
#pragma once

#include <cuda_runtime.h>
#include <nccl.h>

#include <stdexcept>
#include <string>

namespace sparsering::parallel {

inline void check_cuda(cudaError_t code, const char* call, const char* file, int line) {
  if (code == cudaSuccess) return;
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                           ": " + cudaGetErrorString(code));
}

inline void check_nccl(ncclResult_t code, const char* call, const char* file, int line) {
  if (code == ncclSuccess) return;
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                           ": " + ncclGetErrorString(code));
}

}  // namespace sparsering::parallel

#define CUDA_CHECK(call) ::sparsering::parallel::check_cuda((call), #call, __FILE__, __LINE__)
#define NCCL_CHECK(call) ::sparsering::parallel::check_nccl((call), #call, __FILE__, __LINE__)

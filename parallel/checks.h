// Checked calls into MPI, and in CUDA builds into CUDA and NCCL: a failure throws with the call,
// the file and line, and the library's own error string, so the job ends with a message that
// says what broke. The macros carry the project's prefix so they never meet another library's.
#pragma once

#include <mpi.h>

#include <stdexcept>
#include <string>

#ifdef SPARSERING_WITH_CUDA
#include <cuda_runtime.h>
#include <nccl.h>
#endif

namespace sparsering::parallel {

inline void check_mpi(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                           ": " + std::string(text, length));
}

#ifdef SPARSERING_WITH_CUDA
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
#endif

}  // namespace sparsering::parallel

#define SPARSERING_MPI_CHECK(call) \
  ::sparsering::parallel::check_mpi((call), #call, __FILE__, __LINE__)
#ifdef SPARSERING_WITH_CUDA
#define SPARSERING_CUDA_CHECK(call) \
  ::sparsering::parallel::check_cuda((call), #call, __FILE__, __LINE__)
#define SPARSERING_NCCL_CHECK(call) \
  ::sparsering::parallel::check_nccl((call), #call, __FILE__, __LINE__)
#endif

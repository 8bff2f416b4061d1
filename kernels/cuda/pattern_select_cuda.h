// Host entry point of the pattern-selection kernel (kernels/cuda/pattern_select.cu): the
// vertical-slash selection of kernels/vertical_slash.h (select_pattern) in one launch.
// Framework-free like attention_mass_cuda.h: raw pointers and a stream; returns
// cudaErrorInvalidValue on bad input (nothing is launched then) and otherwise the launch status;
// the work is asynchronous on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sparsering::kernels {

struct PatternSelectParams {
  const float* vertical = nullptr;  // [heads, length] mass per key column, contiguous
  const float* slash = nullptr;     // [heads, length] mass per diagonal (query - key), contiguous
  int heads = 0;                    // at most 65535 (grid limit)
  int64_t length = 0;               // at most INT_MAX
  int block_size = 0;
  // Each in [0, length]: the top num_columns columns and num_diagonals diagonals per head, and the
  // first sink_tokens columns and local_tokens diagonals whatever their mass.
  int64_t num_columns = 0;
  int64_t num_diagonals = 0;
  int64_t sink_tokens = 0;
  int64_t local_tokens = 0;

  int64_t width = 0;                // row width of `columns`: at least the chosen count
  int64_t* columns = nullptr;       // [heads, width]: chosen positions ascending, then -1
  bool* block_diagonals = nullptr;  // [heads, length / block_size], all false on entry
};

// Top-k is by the order of the float values, ties broken towards the lower index (the CPU twin
// in kernels/vertical_slash.cpp picks the same entries). Block offset d is marked when a chosen
// diagonal lies in [(d - 1) * block_size + 1, (d + 1) * block_size - 1].
cudaError_t launch_select_pattern(const PatternSelectParams& p, cudaStream_t stream);

}  // namespace sparsering::kernels

// Host entry point of the cross-entropy row kernel (kernels/cuda/cross_entropy.cu): per row of
// fp32 logits, the loss and (optionally) the gradient of the logits in one launch.
// Framework-free like the other kernels/cuda headers: raw pointers and a stream; returns
// cudaErrorInvalidValue on bad input (nothing is launched then) and otherwise the launch status;
// the work is asynchronous on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace sparsering::kernels {

// The element type of the gradient the kernel writes (the model's matmul dtype).
enum class GradElement { kFloat32, kBFloat16, kFloat16 };

struct CrossEntropyRowsParams {
  const float* logits = nullptr;    // [rows, vocab], contiguous
  const int64_t* labels = nullptr;  // [rows]; any value (see losses)
  int64_t rows = 0;                 // at most 2^31 - 1 (one CTA per row)
  int64_t vocab = 0;                // at least 1
  int64_t ignore_label = -100;
  // [rows]: logsumexp(row) - row[label]; 0 where label == ignore_label, NaN where the label lies
  // outside [0, vocab) (so the trainer's NaN policy sees it).
  float* losses = nullptr;
  // [rows, vocab] of `grad_element`, or null for the loss only:
  // (softmax(row) - onehot(label)) * grad_scale, all zero for ignored rows.
  void* grad = nullptr;
  GradElement grad_element = GradElement::kBFloat16;
  float grad_scale = 1.0f;
};

cudaError_t launch_cross_entropy_rows(const CrossEntropyRowsParams& p, cudaStream_t stream);

}  // namespace sparsering::kernels

// Cross-entropy per row of logits, with the gradient of the logits formed in the same pass: the
// inner step of the chunked output-projection loss (trainer/model/chunked_loss.h). CUDA tensors
// run one kernel (kernels/cuda/cross_entropy.cu); CPU tensors run the reference twin, torch ops
// that any device can run (the GPU test compares the two on the same logits).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace sparsering::kernels {

struct CrossEntropyRows {
  at::Tensor losses;  // fp32 [rows]
  at::Tensor grad;    // [rows, vocab] in the asked dtype; undefined when none was asked for
};

// logits fp32 [rows, vocab], labels int64 [rows]. Per row: logsumexp(row) - row[label], 0 where
// label == ignore_label and NaN where a label lies outside [0, vocab) (so the trainer's NaN
// policy stops the step rather than a device assert or a silent wrong loss). With grad_type:
// (softmax(row) - onehot(label)) * grad_scale in that dtype, exact zero rows where ignored
// (whatever their logits hold). Any rows >= 0; CUDA takes fp32, bf16 or fp16 gradients.
CrossEntropyRows cross_entropy_rows(const at::Tensor& logits, const at::Tensor& labels,
                                    int64_t ignore_label, double grad_scale,
                                    std::optional<at::ScalarType> grad_type);

// The reference twin: the same result from torch ops, on any device.
CrossEntropyRows cross_entropy_rows_reference(const at::Tensor& logits, const at::Tensor& labels,
                                              int64_t ignore_label, double grad_scale,
                                              std::optional<at::ScalarType> grad_type);

}  // namespace sparsering::kernels

#include "kernels/cross_entropy.h"

#include <limits>

#include "kernels/sparse_attention_cuda_ops.h"

namespace sparsering::kernels {
namespace {

void check_inputs(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat,
              "cross_entropy_rows: logits must be fp32 [rows, vocab], got ", logits.sizes(), " ",
              logits.scalar_type());
  TORCH_CHECK(logits.size(1) >= 1, "cross_entropy_rows: the vocabulary is empty");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == logits.size(0) &&
                  labels.scalar_type() == at::kLong && labels.device() == logits.device(),
              "cross_entropy_rows: labels must be int64 [", logits.size(0),
              "] on the logits' device, got ", labels.sizes(), " ", labels.scalar_type());
}

}  // namespace

CrossEntropyRows cross_entropy_rows_reference(const at::Tensor& logits, const at::Tensor& labels,
                                              int64_t ignore_label, double grad_scale,
                                              std::optional<at::ScalarType> grad_type) {
  check_inputs(logits, labels);
  const auto ignored = labels == ignore_label;
  const auto in_range = (labels >= 0).logical_and(labels < logits.size(1));
  const auto safe_labels = at::where(in_range, labels, at::zeros_like(labels)).unsqueeze(1);
  const auto lse = at::logsumexp(logits, -1);
  const auto picked = logits.gather(1, safe_labels).squeeze(1);
  const auto nan = at::full_like(lse, std::numeric_limits<float>::quiet_NaN());
  CrossEntropyRows result;
  result.losses = at::where(ignored, at::zeros_like(lse), at::where(in_range, lse - picked, nan));
  if (!grad_type) return result;
  auto grad = at::exp(logits - lse.unsqueeze(1));
  grad.scatter_add_(1, safe_labels, in_range.to(at::kFloat).neg().unsqueeze(1));
  // Ignored rows are exact zeros, as the kernel writes them, even where their logits are not
  // finite: a token without a label contributes nothing.
  grad = at::where(ignored.unsqueeze(1), at::zeros_like(grad), grad.mul_(grad_scale));
  result.grad = grad.to(*grad_type);
  return result;
}

CrossEntropyRows cross_entropy_rows(const at::Tensor& logits, const at::Tensor& labels,
                                    int64_t ignore_label, double grad_scale,
                                    std::optional<at::ScalarType> grad_type) {
  check_inputs(logits, labels);
  if (logits.is_cuda())
    return cuda_ops::cross_entropy_rows_cuda(logits, labels, ignore_label, grad_scale, grad_type);
  return cross_entropy_rows_reference(logits, labels, ignore_label, grad_scale, grad_type);
}

}  // namespace sparsering::kernels

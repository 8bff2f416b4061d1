// Tensors -> kernels/cuda/cross_entropy.cu on the current stream. kernels/cross_entropy.cpp has
// checked the shapes and dtypes.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cross_entropy.h"
#include "kernels/cuda/cross_entropy_cuda.h"
#include "kernels/sparse_attention_cuda_ops.h"

namespace sparsering::kernels::cuda_ops {

CrossEntropyRows cross_entropy_rows_cuda(const at::Tensor& logits, const at::Tensor& labels,
                                         int64_t ignore_label, double grad_scale,
                                         std::optional<at::ScalarType> grad_type) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto x = logits.contiguous();
  const auto y = labels.contiguous();
  CrossEntropyRows result;
  result.losses = at::empty({x.size(0)}, x.options());
  CrossEntropyRowsParams p;
  p.logits = x.data_ptr<float>();
  p.labels = y.data_ptr<int64_t>();
  p.rows = x.size(0);
  p.vocab = x.size(1);
  p.ignore_label = ignore_label;
  p.losses = result.losses.data_ptr<float>();
  p.grad_scale = static_cast<float>(grad_scale);
  if (grad_type) {
    switch (*grad_type) {
      case at::kFloat:
        p.grad_element = GradElement::kFloat32;
        break;
      case at::kBFloat16:
        p.grad_element = GradElement::kBFloat16;
        break;
      case at::kHalf:
        p.grad_element = GradElement::kFloat16;
        break;
      default:
        TORCH_CHECK(false,
                    "cross_entropy_rows: the gradient dtype must be fp32, bf16 or fp16, got ",
                    *grad_type);
    }
    result.grad = at::empty(x.sizes(), x.options().dtype(*grad_type));
    p.grad = result.grad.data_ptr();
  }
  if (p.rows == 0) return result;  // nothing to launch (empty tensors have no data pointer)
  const cudaError_t status =
      launch_cross_entropy_rows(p, c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(status == cudaSuccess,
              "launch_cross_entropy_rows failed: ", cudaGetErrorString(status));
  return result;
}

}  // namespace sparsering::kernels::cuda_ops

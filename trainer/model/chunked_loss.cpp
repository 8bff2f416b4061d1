#include "trainer/model/chunked_loss.h"

#include <torch/autograd.h>

#include "kernels/cross_entropy.h"

namespace sparsering::trainer {
namespace {

// a @ b with an fp32 result. On GPUs a bf16/fp16 product writes fp32 straight from the tensor
// cores' accumulators (one pass over the [tokens, vocab] logits instead of a write and a cast).
at::Tensor fp32_product(const at::Tensor& a, const at::Tensor& b) {
  const bool half = a.scalar_type() == at::kBFloat16 || a.scalar_type() == at::kHalf;
  if (a.is_cuda() && half) return at::mm(a, b, at::kFloat);
  return at::mm(a, b).to(at::kFloat);
}

class ChunkedCrossEntropy : public torch::autograd::Function<ChunkedCrossEntropy> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& weight, const at::Tensor& labels,
                            int64_t chunk_tokens, double normalizer) {
    const int64_t tokens = hidden.size(0);
    const int64_t chunk = chunk_tokens > 0 ? chunk_tokens : std::max<int64_t>(tokens, 1);
    // The three matmuls run in the model's dtype (bf16 tensor cores on GPUs); the softmax, the
    // loss and the weight-gradient accumulator are fp32.
    const auto matmul_type = hidden.scalar_type();
    const auto w = weight.to(matmul_type);
    auto grad_hidden = at::empty(hidden.sizes(), hidden.options());
    auto grad_weight = at::zeros(weight.sizes(), weight.options().dtype(at::kFloat));
    auto loss = at::zeros({}, hidden.options().dtype(at::kFloat));
    for (int64_t start = 0; start < tokens; start += chunk) {
      const int64_t length = std::min(chunk, tokens - start);
      const auto h = hidden.narrow(0, start, length);
      // d/dlogits of CE = softmax - onehot(label), zero for ignored tokens, already divided by
      // the normalizer and in the matmul dtype.
      const auto rows =
          kernels::cross_entropy_rows(fp32_product(h, w.t()), labels.narrow(0, start, length),
                                      kIgnoreLabel, 1.0 / normalizer, matmul_type);
      loss += rows.losses.sum();
      grad_hidden.narrow(0, start, length).copy_(at::matmul(rows.grad, w));
      grad_weight.add_(fp32_product(rows.grad.t(), h));
    }
    ctx->save_for_backward({grad_hidden, grad_weight.to(weight.scalar_type())});
    return loss / normalizer;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto scale = grads[0];
    return {saved[0] * scale.to(saved[0].scalar_type()),
            saved[1] * scale.to(saved[1].scalar_type()), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor chunked_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                 const at::Tensor& labels, int64_t chunk_tokens,
                                 double normalizer) {
  return ChunkedCrossEntropy::apply(hidden, weight, labels, chunk_tokens, normalizer);
}

at::Tensor cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight,
                             const at::Tensor& labels, int64_t chunk_tokens) {
  at::NoGradGuard no_grad;
  const int64_t tokens = hidden.size(0);
  const int64_t chunk = chunk_tokens > 0 ? chunk_tokens : std::max<int64_t>(tokens, 1);
  const auto w = weight.to(hidden.scalar_type());
  auto loss = at::zeros({}, hidden.options().dtype(at::kFloat));
  for (int64_t start = 0; start < tokens; start += chunk) {
    const int64_t length = std::min(chunk, tokens - start);
    const auto h = hidden.narrow(0, start, length);
    loss += kernels::cross_entropy_rows(fp32_product(h, w.t()), labels.narrow(0, start, length),
                                        kIgnoreLabel, 1.0, std::nullopt)
                .losses.sum();
  }
  return loss;
}

}  // namespace sparsering::trainer

#include "trainer/model/chunked_loss.h"

#include <torch/autograd.h>

namespace sparsering::trainer {
namespace {

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
      const auto y = labels.narrow(0, start, length);
      const auto valid = y != kIgnoreLabel;
      const auto safe_y = at::where(valid, y, at::zeros_like(y));
      const auto logits = at::matmul(h, w.t()).to(at::kFloat);
      const auto lse = at::logsumexp(logits, -1);
      const auto picked = logits.gather(1, safe_y.unsqueeze(1)).squeeze(1);
      loss += at::where(valid, lse - picked, at::zeros_like(lse)).sum();
      // d/dlogits of CE = softmax - onehot(label), zero for ignored tokens.
      auto grad_logits = at::exp(logits - lse.unsqueeze(1));
      grad_logits.scatter_add_(1, safe_y.unsqueeze(1),
                               at::full({length, 1}, -1.0, grad_logits.options()));
      grad_logits.mul_(valid.unsqueeze(1).to(at::kFloat) / normalizer);
      const auto grad_logits_m = grad_logits.to(matmul_type);
      grad_hidden.narrow(0, start, length).copy_(at::matmul(grad_logits_m, w));
      grad_weight.add_(at::matmul(grad_logits_m.t(), h).to(at::kFloat));
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
    const auto y = labels.narrow(0, start, length);
    const auto valid = y != kIgnoreLabel;
    const auto logits = at::matmul(hidden.narrow(0, start, length), w.t()).to(at::kFloat);
    const auto picked = logits.gather(1, at::where(valid, y, at::zeros_like(y)).unsqueeze(1));
    const auto losses = at::logsumexp(logits, -1) - picked.squeeze(1);
    loss += at::where(valid, losses, at::zeros_like(losses)).sum();
  }
  return loss;
}

}  // namespace sparsering::trainer

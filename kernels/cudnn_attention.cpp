#include "kernels/cudnn_attention.h"

#include <ATen/ops/_scaled_dot_product_cudnn_attention.h>
#include <ATen/ops/_scaled_dot_product_cudnn_attention_backward.h>

namespace sparsering::kernels {
namespace {

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && v.is_cuda(),
              "cuDNN attention: q, k, v must be CUDA tensors (CPU runs use the reference twin)");
  TORCH_CHECK(q.dim() == 4 && k.sizes() == v.sizes() && q.size(0) == k.size(0) &&
                  q.size(3) == k.size(3) && q.size(2) % k.size(2) == 0,
              "cuDNN attention: q [batch, tokens, heads, dim] and k, v [batch, tokens, kv_heads, "
              "dim] with kv_heads dividing heads");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
              "cuDNN attention: bf16 or fp16 inputs");
}

// [batch, tokens, heads, dim] -> cuDNN's [batch, heads, tokens, dim] view; key/value heads
// repeated over the query-head group (grouped-query attention).
at::Tensor as_bhsd(const at::Tensor& t, int64_t heads) {
  const int64_t group = heads / t.size(2);
  return (group == 1 ? t : t.repeat_interleave(group, 2)).transpose(1, 2);
}

// [batch, heads, tokens, dim] gradient of repeated key/value heads -> [batch, tokens, kv_heads,
// dim], summed over each group.
at::Tensor sum_groups(const at::Tensor& grad_bhsd, int64_t kv_heads) {
  const auto g = grad_bhsd.transpose(1, 2);  // [batch, tokens, heads, dim]
  const int64_t group = g.size(2) / kv_heads;
  if (group == 1) return g;
  return g.reshape({g.size(0), g.size(1), kv_heads, group, g.size(3)}).sum(3, false, at::kFloat);
}

}  // namespace

AttentionPartial cudnn_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, PlainMask mask,
                                         double softmax_scale) {
  check_inputs(q, k, v);
  const int64_t heads = q.size(2);
  auto result = at::_scaled_dot_product_cudnn_attention(
      q.transpose(1, 2), as_bhsd(k, heads), as_bhsd(v, heads), /*attn_bias=*/std::nullopt,
      /*compute_log_sumexp=*/true, /*dropout_p=*/0.0, mask == PlainMask::kCausal,
      /*return_debug_mask=*/false, softmax_scale);
  AttentionPartial partial;
  partial.out = std::get<0>(result).transpose(1, 2).contiguous();
  // cuDNN's softmax statistics are the natural-log LSE, shaped [batch, heads, tokens, 1].
  partial.lse = std::get<1>(result).reshape({q.size(0), heads, q.size(1)}).to(at::kFloat);
  return partial;
}

void cudnn_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                              PlainMask mask, double softmax_scale, at::Tensor& dq, at::Tensor& dk,
                              at::Tensor& dv) {
  check_inputs(q, k, v);
  const int64_t batch = q.size(0), tokens = q.size(1), heads = q.size(2);
  TORCH_CHECK(
      lse.sizes() == at::IntArrayRef({batch, heads, tokens}) && lse.scalar_type() == at::kFloat,
      "cuDNN attention backward: lse must be fp32 [batch, heads, q_tokens]");
  // No dropout: the random-number state is never read, but the op takes the tensors.
  const auto philox = at::zeros({}, q.options().dtype(at::kLong));
  const auto grads = at::_scaled_dot_product_cudnn_attention_backward(
      dout.transpose(1, 2), q.transpose(1, 2), as_bhsd(k, heads), as_bhsd(v, heads),
      out.transpose(1, 2), lse.contiguous().view({batch, heads, tokens, 1}), philox, philox,
      /*attn_bias=*/at::Tensor(), /*cum_seq_q=*/at::Tensor(), /*cum_seq_k=*/at::Tensor(), tokens,
      k.size(1), /*dropout_p=*/0.0, mask == PlainMask::kCausal, softmax_scale);
  dq.add_(std::get<0>(grads).transpose(1, 2));
  dk.add_(sum_groups(std::get<1>(grads), k.size(2)));
  dv.add_(sum_groups(std::get<2>(grads), k.size(2)));
}

}  // namespace sparsering::kernels

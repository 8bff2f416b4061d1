// Device dispatch and argument checks of the block-sparse attention ops.
#include "kernels/sparse_attention.h"

#include "kernels/cpu/sparse_attention_cpu.h"
#include "kernels/sparse_attention_cuda_ops.h"

namespace sparsering::kernels {
namespace {

// Document masking: one int32 key start per (batch, local query), on the queries' device.
void check_key_starts(const at::Tensor& key_starts, const at::Tensor& q) {
  if (!key_starts.defined()) return;
  TORCH_CHECK(key_starts.scalar_type() == at::kInt,
              "sparse attention: q_key_starts must be int32, got ", key_starts.scalar_type());
  TORCH_CHECK(
      key_starts.dim() == 2 && key_starts.size(0) == q.size(0) && key_starts.size(1) == q.size(1),
      "sparse attention: q_key_starts must be [batch, q_tokens] = [", q.size(0), ", ", q.size(1),
      "], got ", key_starts.sizes());
  TORCH_CHECK(key_starts.device() == q.device(), "sparse attention: q_key_starts is on ",
              key_starts.device(), " but q is on ", q.device());
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const ShardBlocks& blocks, const SparseIndex& index) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "sparse attention: q, k, v must be [batch, tokens, heads, head_dim]");
  TORCH_CHECK(k.sizes() == v.sizes(), "sparse attention: k and v shapes differ");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3),
              "sparse attention: q and k differ in batch or head_dim");
  TORCH_CHECK(q.size(2) % k.size(2) == 0, "sparse attention: kv heads (", k.size(2),
              ") must divide query heads (", q.size(2), ")");
  TORCH_CHECK(index.block_size > 0 && q.size(1) % index.block_size == 0 &&
                  k.size(1) % index.block_size == 0,
              "sparse attention: token counts must be multiples of the block size ",
              index.block_size);
  TORCH_CHECK(blocks.q_block_ids.numel() == q.size(1) / index.block_size &&
                  blocks.k_block_ids.numel() == k.size(1) / index.block_size,
              "sparse attention: block id tensors do not match the token counts");
  TORCH_CHECK(
      index.block_row_offsets.numel() == q.size(0) * q.size(2) * (q.size(1) / index.block_size) + 1,
      "sparse attention: the index has ", index.block_row_offsets.numel() - 1,
      " rows, expected batch x heads x query blocks");
  check_key_starts(blocks.q_key_starts, q);
}

}  // namespace

AttentionPartial sparse_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const ShardBlocks& blocks,
                                          const SparseIndex& index, double softmax_scale) {
  check_inputs(q, k, v, blocks, index);
  if (q.is_cuda())
    return cuda_ops::sparse_attention_forward_cuda(q, k, v, blocks, index, softmax_scale);
  return cpu::sparse_attention_forward_cpu(q, k, v, blocks, index, softmax_scale);
}

void sparse_attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                               const at::Tensor& delta, const ShardBlocks& blocks,
                               const SparseIndex& index, double softmax_scale, bool deterministic,
                               at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  check_inputs(q, k, v, blocks, index);
  TORCH_CHECK(dq.scalar_type() == at::kFloat && dk.scalar_type() == at::kFloat &&
                  dv.scalar_type() == at::kFloat,
              "sparse attention backward: gradient accumulators must be fp32");
  if (q.is_cuda()) {
    cuda_ops::sparse_attention_backward_cuda(dout, q, k, v, out, lse, delta, blocks, index,
                                             softmax_scale, deterministic, dq, dk, dv);
    return;
  }
  cpu::sparse_attention_backward_cpu(dout, q, k, v, lse, delta, blocks, index, softmax_scale, dq,
                                     dk, dv);
}

at::Tensor attention_delta(const at::Tensor& dout, const at::Tensor& out) {
  if (dout.is_cuda()) return cuda_ops::attention_delta_cuda(dout, out);
  // [batch, tokens, heads, dim] -> [batch, heads, tokens]
  const auto type = dout.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return (dout.to(type) * out.to(type)).sum(-1).permute({0, 2, 1}).to(at::kFloat).contiguous();
}

void lse_merge(at::Tensor& out_acc, at::Tensor& lse_acc, const at::Tensor& out_part,
               const at::Tensor& lse_part) {
  TORCH_CHECK(out_acc.sizes() == out_part.sizes() && lse_acc.sizes() == lse_part.sizes(),
              "lse_merge: accumulator and partial shapes differ");
  if (out_acc.is_cuda()) {
    cuda_ops::lse_merge_cuda(out_acc, lse_acc, out_part, lse_part);
    return;
  }
  cpu::lse_merge_cpu(out_acc, lse_acc, out_part, lse_part);
}

}  // namespace sparsering::kernels

#include "kernels/cpu/sparse_attention_cpu.h"

#include <limits>

namespace sparsering::kernels::cpu {
namespace {

// Global token positions of a shard's tokens from its blocks' global ids.
at::Tensor token_positions(const at::Tensor& block_ids, int64_t block_size) {
  const auto offsets = at::arange(block_size, block_ids.options().dtype(at::kLong));
  return (block_ids.to(at::kLong).unsqueeze(1) * block_size + offsets.unsqueeze(0)).reshape(-1);
}

// Row id of every CSR entry.
at::Tensor entry_rows(const at::Tensor& row_offsets) {
  const auto counts = (row_offsets.slice(0, 1) - row_offsets.slice(0, 0, -1)).to(at::kLong);
  return at::repeat_interleave(at::arange(counts.numel(), counts.options()), counts);
}

at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// [batch, tokens, heads, dim] -> [batch, heads, tokens, dim] in the compute type, with kv heads
// repeated to the query heads (GQA).
at::Tensor heads_first(const at::Tensor& t, int64_t heads, at::ScalarType type) {
  auto x = t.to(type).permute({0, 2, 1, 3});
  const int64_t group = heads / t.size(2);
  return group == 1 ? x : x.repeat_interleave(group, 1);
}

// exp(S - lse) in place over masked scores (masked entries -inf, so they become 0); rows whose
// lse is -inf (no key at all) come out all zero instead of NaN.
at::Tensor& exponentiate_(at::Tensor& masked_scores, const at::Tensor& lse) {
  const auto safe_lse = at::where(at::isinf(lse), at::zeros_like(lse), lse);
  return masked_scores.sub_(safe_lse.to(masked_scores.dtype()).unsqueeze(-1)).exp_();
}

// Scale * Q K^T with the keys outside the mask at -inf.
at::Tensor masked_scores(const at::Tensor& q, const at::Tensor& k, const at::Tensor& mask,
                         double scale) {
  return at::matmul(q, k.transpose(-1, -2))
      .mul_(scale)
      .masked_fill_(mask.logical_not(), -std::numeric_limits<double>::infinity());
}

}  // namespace

at::Tensor attention_mask(const ShardBlocks& blocks, const SparseIndex& index, int64_t batch,
                          int64_t heads, int64_t q_tokens, int64_t k_tokens) {
  const int64_t bs = index.block_size;
  const int64_t q_blocks = q_tokens / bs, k_blocks = k_tokens / bs;
  const auto device = blocks.q_block_ids.device();
  const auto bool_options = at::TensorOptions().dtype(at::kBool).device(device);

  auto block_mask = at::zeros({batch * heads * q_blocks, k_blocks}, bool_options);
  if (index.num_blocks() > 0) {
    block_mask.index_put_({entry_rows(index.block_row_offsets), index.block_cols.to(at::kLong)},
                          at::ones({}, bool_options));
  }
  auto column_mask = at::zeros({batch * heads * q_blocks, k_tokens}, bool_options);
  if (index.num_columns() > 0) {
    column_mask.index_put_(
        {entry_rows(index.column_row_offsets), index.column_indices.to(at::kLong)},
        at::ones({}, bool_options));
  }
  auto tokens = block_mask.view({batch, heads, q_blocks, 1, k_blocks, 1})
                    .expand({batch, heads, q_blocks, bs, k_blocks, bs})
                    .reshape({batch, heads, q_tokens, k_tokens});
  tokens = tokens.logical_or(column_mask.view({batch, heads, q_blocks, 1, k_tokens})
                                 .expand({batch, heads, q_blocks, bs, k_tokens})
                                 .reshape({batch, heads, q_tokens, k_tokens}));
  const auto q_pos = token_positions(blocks.q_block_ids, bs);
  const auto k_pos = token_positions(blocks.k_block_ids, bs);
  const auto causal = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1);
  tokens = tokens.logical_and(causal);
  if (!blocks.q_key_starts.defined()) return tokens;
  // Document masking: keys before the query's document start, [batch, 1, q_tokens, k_tokens].
  const auto in_document =
      k_pos.view({1, 1, 1, k_tokens}) >= blocks.q_key_starts.to(at::kLong).view({batch, 1, -1, 1});
  return tokens.logical_and(in_document);
}

AttentionPartial sparse_attention_forward_cpu(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& v, const ShardBlocks& blocks,
                                              const SparseIndex& index, double softmax_scale) {
  const int64_t batch = q.size(0), q_tokens = q.size(1), heads = q.size(2);
  const auto type = compute_type(q);
  const auto mask = attention_mask(blocks, index, batch, heads, q_tokens, k.size(1));
  const auto qh = heads_first(q, heads, type);
  const auto kh = heads_first(k, heads, type);
  const auto vh = heads_first(v, heads, type);
  auto scores = masked_scores(qh, kh, mask, softmax_scale);
  const auto lse = at::logsumexp(scores, -1);
  const auto& p = exponentiate_(scores, lse);
  const auto out = at::matmul(p, vh).permute({0, 2, 1, 3}).to(q.scalar_type()).contiguous();
  return {out, lse.to(at::kFloat).contiguous()};
}

void sparse_attention_backward_cpu(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& v, const at::Tensor& lse,
                                   const at::Tensor& delta, const ShardBlocks& blocks,
                                   const SparseIndex& index, double softmax_scale, at::Tensor& dq,
                                   at::Tensor& dk, at::Tensor& dv) {
  const int64_t batch = q.size(0), q_tokens = q.size(1), heads = q.size(2);
  const int64_t kv_heads = k.size(2), k_tokens = k.size(1), dim = q.size(3);
  const auto type = compute_type(q);
  const auto mask = attention_mask(blocks, index, batch, heads, q_tokens, k_tokens);
  const auto qh = heads_first(q, heads, type);
  const auto kh = heads_first(k, heads, type);
  const auto vh = heads_first(v, heads, type);
  const auto doh = heads_first(dout, heads, type);
  auto scores = masked_scores(qh, kh, mask, softmax_scale);
  const auto& p = exponentiate_(scores, lse);
  // dS = P * (dO V^T - delta): the softmax Jacobian with delta = rowsum(dO * O) (FA2, eq. in 3.1).
  const auto ds = at::matmul(doh, vh.transpose(-1, -2)).sub_(delta.to(type).unsqueeze(-1)).mul_(p);
  const auto dqh = at::matmul(ds, kh) * softmax_scale;
  const auto dkh = at::matmul(ds.transpose(-1, -2), qh) * softmax_scale;
  const auto dvh = at::matmul(p.transpose(-1, -2), doh);
  // Sum the query heads of each GQA group back onto their kv head.
  auto group_sum = [&](const at::Tensor& t) {
    return t.view({batch, kv_heads, heads / kv_heads, k_tokens, dim}).sum(2).permute({0, 2, 1, 3});
  };
  dq.add_(dqh.permute({0, 2, 1, 3}).to(dq.scalar_type()));
  dk.add_(group_sum(dkh).to(dk.scalar_type()));
  dv.add_(group_sum(dvh).to(dv.scalar_type()));
}

void lse_merge_cpu(at::Tensor& out_acc, at::Tensor& lse_acc, const at::Tensor& out_part,
                   const at::Tensor& lse_part) {
  const auto type = compute_type(out_acc);
  const auto la = lse_acc.to(type), lb = lse_part.to(type);
  const auto m = at::maximum(la, lb);
  const auto safe_m = at::where(at::isinf(m), at::zeros_like(m), m);
  const auto wa = at::exp(la - safe_m), wb = at::exp(lb - safe_m);
  const auto sum = wa + wb;
  const auto safe_sum = at::where(sum == 0, at::ones_like(sum), sum);
  // Weights [batch, heads, tokens] -> [batch, tokens, heads, 1] to match the output layout.
  auto to_out = [](const at::Tensor& w) { return w.permute({0, 2, 1}).unsqueeze(-1); };
  out_acc.copy_(to_out(wa / safe_sum) * out_acc.to(type) +
                to_out(wb / safe_sum) * out_part.to(type));
  lse_acc.copy_(safe_m + at::log(sum));
}

}  // namespace sparsering::kernels::cpu

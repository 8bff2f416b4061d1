// Test references independent of the code under test: dense attention in fp64 with an explicit
// boolean mask, differentiated by autograd, the global vertical-slash mask written out token
// by token from a pattern's definition, and document masks from document boundaries; and the NaN
// poisoning of CUDA outputs.
#pragma once

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels/vertical_slash.h"

namespace sparsering::testing {

// q [B, S, H, D], k/v [B, S, Hk, D], mask [B or 1, H, Sq, Sk] bool. fp64 output [B, Sq, H, D]
// and lse [B, H, Sq] (-inf for rows with no key). Differentiable through autograd.
inline std::pair<at::Tensor, at::Tensor> reference_attention(const at::Tensor& q,
                                                             const at::Tensor& k,
                                                             const at::Tensor& v,
                                                             const at::Tensor& mask, double scale) {
  const int64_t heads = q.size(2), group = heads / k.size(2);
  auto qh = q.to(at::kDouble).permute({0, 2, 1, 3});
  auto kh = k.to(at::kDouble).permute({0, 2, 1, 3}).repeat_interleave(group, 1);
  auto vh = v.to(at::kDouble).permute({0, 2, 1, 3}).repeat_interleave(group, 1);
  auto scores = at::matmul(qh, kh.transpose(-1, -2)) * scale;
  scores = scores.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  auto lse = at::logsumexp(scores, -1);
  const auto empty_row = mask.any(-1).logical_not();
  // Rows with no key: probabilities 0 (softmax would give NaN).
  auto p = at::exp(scores - at::where(empty_row, at::zeros_like(lse), lse).unsqueeze(-1));
  auto out = at::matmul(p, vh).permute({0, 2, 1, 3});
  return {out, lse};
}

// The token-level mask a vertical-slash pattern means on the whole sequence, [H, S, S]:
// causal, and either the key column is chosen or the (query block, key block) pair is active.
inline at::Tensor global_pattern_mask(const kernels::VerticalSlashPattern& pattern) {
  const int64_t length = pattern.sequence_length, bs = pattern.block_size;
  const int64_t heads = pattern.block_diagonals.size(0);
  const auto positions = at::arange(length, at::kLong);
  const auto block = at::div(positions, bs, "floor");
  const auto offset = (block.unsqueeze(1) - block.unsqueeze(0)).clamp_min(0);  // [S, S]
  const auto causal = positions.unsqueeze(0) <= positions.unsqueeze(1);
  auto mask = at::zeros({heads, length, length}, at::kBool);
  for (int64_t h = 0; h < heads; ++h) {
    auto blocks =
        pattern.block_diagonals[h].cpu().index_select(0, offset.reshape(-1)).view({length, length});
    auto columns = at::zeros({length}, at::kBool);
    const auto chosen = pattern.columns[h].cpu().contiguous();
    for (int64_t i = 0; i < chosen.numel(); ++i) {
      const int64_t c = chosen[i].item<int64_t>();
      if (c >= 0) columns[c] = true;
    }
    mask[h] = blocks.logical_or(columns.unsqueeze(0)).logical_and(causal);
  }
  return mask;
}

// Document masking, written from its definition: documents are the ranges between consecutive
// entries of `starts` (ascending, starting with 0) over a sequence of `length` tokens.
// The document number of every position, int64 [length].
inline at::Tensor document_ids(const std::vector<int64_t>& starts, int64_t length) {
  auto boundaries = at::zeros({length}, at::kLong);
  for (const int64_t start : starts) {
    if (start > 0 && start < length) boundaries[start] = 1;
  }
  return boundaries.cumsum(0);
}

// [length, length] bool: query i and key j lie in the same document.
inline at::Tensor same_document_mask(const std::vector<int64_t>& starts, int64_t length) {
  const auto ids = document_ids(starts, length);
  return ids.unsqueeze(1) == ids.unsqueeze(0);
}

// The first position of each position's document, int32 [length]: what the kernels take
// (as q_key_starts, gathered at the local queries' positions).
inline at::Tensor document_key_starts(const std::vector<int64_t>& starts, int64_t length) {
  auto first = at::zeros({length}, at::kInt);
  for (size_t d = 0; d < starts.size(); ++d) {
    const int64_t end = d + 1 < starts.size() ? starts[d + 1] : length;
    first.slice(0, starts[d], end).fill_(static_cast<int>(starts[d]));
  }
  return first;
}

// Logits of sampled queries (positions q_positions, int64 [n]) against every key of a sequence of
// `length` tokens, fp32 [batch, heads, n, length], harder than sample_logits makes them: -inf
// after each query (causal), a quarter of the other entries -inf too, and the last head's first
// query of the last sequence -inf on every key (its softmax is undefined: probabilities 0).
inline at::Tensor estimation_logits(int64_t batch, int64_t heads, const at::Tensor& q_positions,
                                    int64_t length) {
  const double inf = std::numeric_limits<double>::infinity();
  auto logits = at::randn({batch, heads, q_positions.size(0), length}) * 3.0;
  const auto after_query = at::arange(length, at::kLong).unsqueeze(0) > q_positions.unsqueeze(1);
  logits.masked_fill_(after_query, -inf);
  logits.masked_fill_(at::rand(logits.sizes()) < 0.25, -inf);
  logits[batch - 1][heads - 1][0].fill_(-inf);
  return logits;
}

// attention_mass of the whole sequence's softmax, in fp64, with probabilities 0 on rows that
// have no finite logit (where softmax gives NaN).
inline kernels::AttentionMass reference_attention_mass(const at::Tensor& logits,
                                                       const at::Tensor& q_positions) {
  const int64_t length = logits.size(3);
  const auto no_key = at::isfinite(logits).any(-1, /*keepdim=*/true).logical_not();
  const auto probabilities = at::softmax(logits.to(at::kDouble), -1).masked_fill(no_key, 0);
  return kernels::attention_mass(probabilities, q_positions, at::arange(length, at::kLong), length);
}

// Leaves two NaN-filled fp32 CUDA blocks of `sizes` in the caching allocator, which hands them to
// an op's next allocations of that size (its outputs): an element the kernels do not write stays
// NaN. Both are alive at once, so that they are two blocks, not one reused.
inline void poison_cuda_float_outputs(at::IntArrayRef sizes) {
  const auto options = at::TensorOptions().device(at::kCUDA).dtype(at::kFloat);
  const auto first = at::full(sizes, NAN, options);
  const auto second = at::full(sizes, NAN, options);
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble).cpu() - b.to(at::kDouble).cpu()).abs().max().item<double>();
}

}  // namespace sparsering::testing

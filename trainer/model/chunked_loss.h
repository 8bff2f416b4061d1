// Cross-entropy of the output projection computed chunk by chunk, with its gradient formed in the
// same pass (the "fused linear cross-entropy"): logits of at most `chunk_tokens` tokens exist at
// once, so a 256K-token shard never materialises [tokens, vocab] logits.
#pragma once

#include <ATen/ATen.h>

namespace sparsering::trainer {

constexpr int64_t kIgnoreLabel = -100;

// sum over tokens of CE(hidden @ weight^T, labels) / normalizer. hidden [tokens, hidden_size],
// weight [vocab, hidden_size], labels int64 [tokens] (kIgnoreLabel = no loss). chunk_tokens 0 =
// one chunk. Differentiable in hidden and weight.
at::Tensor chunked_cross_entropy(const at::Tensor& hidden, const at::Tensor& weight,
                                 const at::Tensor& labels, int64_t chunk_tokens, double normalizer);

// Evaluation: the sum of CE(hidden @ weight^T, labels) over labelled tokens, fp32, with no
// gradient and the same chunking.
at::Tensor cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& weight,
                             const at::Tensor& labels, int64_t chunk_tokens);

}  // namespace sparsering::trainer

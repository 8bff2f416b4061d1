#include "parallel/plain_steps.h"

namespace sparsering::parallel {

std::optional<kernels::PlainMask> plain_mask(const at::Tensor& q_block_ids,
                                             const at::Tensor& k_block_ids) {
  const auto q_ids = q_block_ids.to(at::kLong), k_ids = k_block_ids.to(at::kLong);
  if (q_ids.equal(k_ids)) {
    const bool ascending =
        q_ids.numel() < 2 || (q_ids.slice(0, 1) > q_ids.slice(0, 0, -1)).all().item<bool>();
    if (ascending) return kernels::PlainMask::kCausal;
    return std::nullopt;
  }
  if (k_ids.max().item<int64_t>() < q_ids.min().item<int64_t>()) return kernels::PlainMask::kFull;
  return std::nullopt;
}

int64_t causal_block_pairs(const at::Tensor& q_block_ids, const at::Tensor& k_block_ids) {
  const auto k_sorted = std::get<0>(k_block_ids.to(at::kLong).sort());
  const auto keys_before =
      at::searchsorted(k_sorted, q_block_ids.to(at::kLong), false, /*right=*/true);
  return keys_before.sum().item<int64_t>();
}

}  // namespace sparsering::parallel

#include "trainer/nm/nm_mask.h"

#include <ATen/core/grad_mode.h>

#include <stdexcept>
#include <string>
#include <tuple>

namespace sparsering::trainer {

at::Tensor nm_keep_mask(const at::Tensor& weight, int64_t n, int64_t m) {
  if (weight.dim() != 2 || m < 2 || n < 1 || n >= m || weight.size(1) % m != 0) {
    throw std::invalid_argument(
        "nm_keep_mask: needs a weight [out, in] with in % m == 0 and "
        "1 <= n < m; got " +
        std::to_string(weight.dim()) +
        "-d weight of in = " + std::to_string(weight.dim() == 2 ? weight.size(1) : 0) +
        ", n = " + std::to_string(n) + ", m = " + std::to_string(m));
  }
  at::NoGradGuard no_grad;
  // Rows of [out, in] are contiguous, so viewing it as [groups, m] keeps each group in one row.
  const auto magnitudes = weight.detach().abs().reshape({-1, m});
  // A stable descending sort keeps equal magnitudes in index order: deterministic tie-breaking,
  // unlike topk, whose order among ties is unspecified and may differ between CPU and CUDA.
  const auto order = std::get<1>(at::sort(magnitudes, /*stable=*/true, /*dim=*/1,
                                          /*descending=*/true));
  auto keep = at::zeros(magnitudes.sizes(), magnitudes.options().dtype(at::kBool));
  keep.scatter_(1, order.narrow(1, 0, n), true);
  return keep.view(weight.sizes());
}

at::Tensor apply_keep_mask(const at::Tensor& weight, const at::Tensor& keep_mask) {
  // masked_fill writes +0, where multiplying by the mask would leave -0 for negative weights.
  return weight.masked_fill(keep_mask.logical_not(), 0);
}

}  // namespace sparsering::trainer

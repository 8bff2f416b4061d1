#include "parallel/gradient_sync.h"

namespace sparsering::parallel {

GradientSync::GradientSync(Communicator& group, std::vector<at::Tensor> parameters,
                           int64_t bucket_bytes)
    : group_(group), parameters_(std::move(parameters)) {
  // Reverse order: the last layers' gradients are ready first in the backward pass.
  int64_t filled = 0;
  for (size_t i = parameters_.size(); i-- > 0;) {
    const auto& p = parameters_[i];
    const int64_t bytes = p.numel() * p.element_size();
    const bool fits = !buckets_.empty() && filled + bytes <= bucket_bytes &&
                      parameters_[buckets_.back().front()].options().type_equal(p.options());
    if (!fits) {
      buckets_.emplace_back();
      filled = 0;
    }
    buckets_.back().push_back(i);
    filled += bytes;
  }
}

void GradientSync::synchronize() {
  if (group_.size() == 1) return;
  for (const auto& bucket : buckets_) {
    std::vector<at::Tensor> grads;
    for (size_t i : bucket) {
      auto& p = parameters_[i];
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      grads.push_back(p.grad().reshape(-1));
    }
    auto flat = at::cat(grads);
    if (flat.is_cpu() && at::isReducedFloatingType(flat.scalar_type())) {
      // MPI has no bf16/fp16 sum: reduce the CPU buffer in fp32 (the values are rounded back once,
      // as a bf16 all-reduce on NCCL rounds them).
      auto widened = flat.to(at::kFloat);
      group_.all_reduce(widened);
      flat = widened.to(flat.scalar_type());
    } else {
      group_.all_reduce(flat);
    }
    int64_t offset = 0;
    for (size_t i : bucket) {
      auto& grad = parameters_[i].mutable_grad();
      grad.copy_(flat.slice(0, offset, offset + grad.numel()).view(grad.sizes()));
      offset += grad.numel();
    }
  }
}

}  // namespace sparsering::parallel

// Data-parallel x context-parallel gradient synchronisation: every rank's parameter gradients are
// summed over the group in flat buckets (few large collectives instead of one per tensor). The
// loss is normalised by the global token count, so the sum is the gradient of the global mean.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "parallel/communicator.h"

namespace sparsering::parallel {

class GradientSync {
 public:
  GradientSync(Communicator& group, std::vector<at::Tensor> parameters, int64_t bucket_bytes);

  // Sums every parameter's .grad() over the group in place. Parameters without a gradient get a
  // zero one first, so all ranks issue the same collectives.
  void synchronize();

  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  Communicator& group_;
  std::vector<at::Tensor> parameters_;
  std::vector<std::vector<size_t>> buckets_;  // parameter indices, same dtype and device
};

}  // namespace sparsering::parallel

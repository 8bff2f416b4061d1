// Built without nvcc: CUDA tensors reaching the sparse attention, pattern estimation or
// cross-entropy ops are an error, never a silent detour through the CPU twins.
#include <c10/util/Exception.h>

#include "kernels/sparse_attention_cuda_ops.h"

namespace sparsering::kernels::cuda_ops {
namespace {
[[noreturn]] void no_cuda() {
  TORCH_CHECK(false,
              "SparseRing was built without CUDA (no nvcc at configure time); rebuild on a "
              "machine with the CUDA toolkit to run attention on the GPU");
}
}  // namespace

AttentionPartial sparse_attention_forward_cuda(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const ShardBlocks&,
                                               const SparseIndex&, double) {
  no_cuda();
}
void sparse_attention_backward_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const ShardBlocks&, const SparseIndex&,
                                    double, bool, at::Tensor&, at::Tensor&, at::Tensor&) {
  no_cuda();
}
at::Tensor attention_delta_cuda(const at::Tensor&, const at::Tensor&) { no_cuda(); }
void lse_merge_cuda(at::Tensor&, at::Tensor&, const at::Tensor&, const at::Tensor&) { no_cuda(); }
SoftmaxRowStats softmax_row_stats_cuda(const at::Tensor&) { no_cuda(); }
AttentionMass attention_mass_from_logits_cuda(const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, const at::Tensor&,
                                              const at::Tensor&, int64_t) {
  no_cuda();
}
SoftmaxRowStats sampled_row_stats_cuda(const SampledQueries&) { no_cuda(); }
AttentionMass sampled_attention_mass_cuda(const SampledQueries&, const at::Tensor&,
                                          const at::Tensor&, int64_t) {
  no_cuda();
}
VerticalSlashPattern select_pattern_cuda(const AttentionMass&, int64_t, int64_t, int64_t, int64_t,
                                         int, int64_t) {
  no_cuda();
}
SparseIndex sparse_index_cuda(const SparseIndexInputs&, bool) { no_cuda(); }
CrossEntropyRows cross_entropy_rows_cuda(const at::Tensor&, const at::Tensor&, int64_t, double,
                                         std::optional<at::ScalarType>) {
  no_cuda();
}

}  // namespace sparsering::kernels::cuda_ops

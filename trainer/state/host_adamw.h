// AdamW of an offloaded optimizer slice (optimizer.offload: CPU) on the host, in one pass.
//
// torch's AdamW on CPU tensors walks the whole slice once per operation (decay, two moments,
// square root, division, update: about eight passes over 12 bytes per element); at 3-8 billion
// elements that is memory-bound and takes seconds. host_adamw reads each element's gradient (fp32,
// bf16 or fp16, widened on the fly), its SR-STE term, master and moments once, writes the master,
// moments and the model-dtype weight once, on all host threads, in blocks the compiler vectorises
// (AVX-512 or AVX2 where the CPU has them, chosen at load time). The arithmetic is torch AdamW's,
// operation for operation in fp32 (the compiler may fuse a multiply and an add, so results equal
// torch's to an fp32 rounding, not bit for bit).
//
// HostStepPipeline runs it over a GPU-resident gradient slice in chunks: the next chunk's
// gradient is copied to pinned host memory while the host updates this one, and the updated
// weights go back to the GPU while the host works on the next.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Event.h>

#include <cstdint>
#include <memory>

#include "configs/config.h"

namespace sparsering::trainer {

struct HostAdamWStep {
  double lr = 0;
  int64_t step = 1;          // AdamW's step count (bias corrections), from 1
  double grad_scale = 1;     // gradient clipping's factor, applied after the SR-STE term
  double sr_ste_lambda = 0;  // > 0: adds lambda x the pruned master weights to the gradient
  config::OptimizerConfig optimizer{};
};

// One slice: every tensor 1-d of the same length on the CPU; master, moments fp32; grad fp32,
// bf16 or fp16; keep (uint8, 1 = kept) only with sr_ste_lambda > 0; weights (the model's dtype)
// receives the updated master rounded, or is undefined.
void host_adamw(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                const at::Tensor& grad, const at::Tensor& keep, at::Tensor weights,
                const HostAdamWStep& step);

class HostStepPipeline {
 public:
  // chunk: elements per transfer; buffers of that size are pinned lazily on first GPU use.
  explicit HostStepPipeline(int64_t chunk) : chunk_(chunk) {}

  // Steps a slice whose gradient and model-dtype weights live on `grad.device()` (GPU or CPU)
  // and whose master and moments live on the host. `weights` (same device and length as grad)
  // receives the updated weights.
  void run(const at::Tensor& grad, at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
           const at::Tensor& keep, at::Tensor& weights, const HostAdamWStep& step);

 private:
  struct Buffer {
    at::Tensor grad, weights;            // pinned host, chunk elements each
    std::unique_ptr<c10::Event> landed;  // the gradient chunk is on the host
    std::unique_ptr<c10::Event> sent;    // the weights chunk has left for the GPU
  };
  void allocate(const at::Tensor& grad);

  int64_t chunk_;
  Buffer buffers_[2];
};

}  // namespace sparsering::trainer

#include "trainer/host_adamw.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace sparsering::trainer {
namespace {

// Elements per host task: a few hundred KiB of each stream, so threads split a chunk evenly.
constexpr int64_t kGrain = 1 << 15;

template <typename Grad, typename Weight>
void adamw_loop(float* master, float* exp_avg, float* exp_avg_sq, const Grad* grad,
                const uint8_t* keep, Weight* weights, int64_t n, const HostAdamWStep& s) {
  const auto& o = s.optimizer;
  // The scalars as torch's CPU kernels use them on fp32 tensors: computed in double, then fp32.
  const float decay = static_cast<float>(1 - s.lr * o.weight_decay);
  const float beta1 = static_cast<float>(o.beta1),
              one_minus_beta1 = static_cast<float>(1 - o.beta1);
  const float beta2 = static_cast<float>(o.beta2),
              one_minus_beta2 = static_cast<float>(1 - o.beta2);
  const double bias_correction1 = 1 - std::pow(o.beta1, s.step);
  const float sqrt_bias_correction2 = static_cast<float>(std::sqrt(1 - std::pow(o.beta2, s.step)));
  const float step_size = static_cast<float>(-s.lr / bias_correction1);
  const float eps = static_cast<float>(o.eps);
  const float lambda = static_cast<float>(s.sr_ste_lambda);
  const float scale = static_cast<float>(s.grad_scale);
  const bool sr_ste = keep != nullptr && s.sr_ste_lambda > 0;
  const bool clip = s.grad_scale != 1;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float g = static_cast<float>(grad[i]);
      // SR-STE before clipping, as add_sr_ste_term runs before the norm and the step.
      if (sr_ste && !keep[i]) g += lambda * master[i];
      if (clip) g *= scale;
      float p = master[i];
      if (o.weight_decay != 0) p *= decay;
      const float m = exp_avg[i] * beta1 + one_minus_beta1 * g;
      const float v = exp_avg_sq[i] * beta2 + one_minus_beta2 * (g * g);
      const float denom = std::sqrt(v) / sqrt_bias_correction2 + eps;
      p += step_size * (m / denom);
      master[i] = p;
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
      if (weights) weights[i] = static_cast<Weight>(p);
    }
  });
}

template <typename Grad>
void dispatch_weights(float* master, float* m, float* v, const Grad* grad, const uint8_t* keep,
                      at::Tensor& weights, int64_t n, const HostAdamWStep& s) {
  if (!weights.defined()) {
    adamw_loop<Grad, float>(master, m, v, grad, keep, nullptr, n, s);
  } else if (weights.scalar_type() == at::kFloat) {
    adamw_loop(master, m, v, grad, keep, weights.data_ptr<float>(), n, s);
  } else if (weights.scalar_type() == at::kBFloat16) {
    adamw_loop(master, m, v, grad, keep, weights.data_ptr<at::BFloat16>(), n, s);
  } else if (weights.scalar_type() == at::kHalf) {
    adamw_loop(master, m, v, grad, keep, weights.data_ptr<at::Half>(), n, s);
  } else {
    throw std::invalid_argument("host_adamw: weights must be fp32, bf16 or fp16");
  }
}

c10::Stream current_stream(const at::Device& device) {
  return c10::impl::VirtualGuardImpl(device.type()).getStream(device);
}

}  // namespace

void host_adamw(at::Tensor& master, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                const at::Tensor& grad, const at::Tensor& keep, at::Tensor weights,
                const HostAdamWStep& step) {
  const int64_t n = master.numel();
  auto check = [n](const at::Tensor& t) {
    if (!t.is_cpu() || !t.is_contiguous() || t.numel() != n) {
      throw std::invalid_argument("host_adamw: slices must be contiguous host tensors of " +
                                  std::to_string(n) + " elements");
    }
  };
  check(master);
  check(exp_avg);
  check(exp_avg_sq);
  check(grad);
  const uint8_t* keep_data = keep.defined() ? keep.data_ptr<uint8_t>() : nullptr;
  float* p = master.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  switch (grad.scalar_type()) {
    case at::kFloat:
      return dispatch_weights(p, m, v, grad.data_ptr<float>(), keep_data, weights, n, step);
    case at::kBFloat16:
      return dispatch_weights(p, m, v, grad.data_ptr<at::BFloat16>(), keep_data, weights, n, step);
    case at::kHalf:
      return dispatch_weights(p, m, v, grad.data_ptr<at::Half>(), keep_data, weights, n, step);
    default:
      throw std::invalid_argument("host_adamw: the gradient must be fp32, bf16 or fp16");
  }
}

void HostStepPipeline::allocate(const at::Tensor& grad) {
  if (buffers_[0].grad.defined() && buffers_[0].grad.scalar_type() == grad.scalar_type()) return;
  const auto pinned = at::TensorOptions().dtype(grad.scalar_type()).pinned_memory(true);
  for (Buffer& buffer : buffers_) {
    buffer.grad = at::empty({chunk_}, pinned);
    buffer.weights = at::empty({chunk_}, pinned);
    buffer.landed = std::make_unique<c10::Event>(grad.device().type());
    buffer.sent = std::make_unique<c10::Event>(grad.device().type());
  }
}

void HostStepPipeline::run(const at::Tensor& grad, at::Tensor& master, at::Tensor& exp_avg,
                           at::Tensor& exp_avg_sq, const at::Tensor& keep, at::Tensor& weights,
                           const HostAdamWStep& step) {
  const int64_t n = master.numel();
  auto slice = [](const at::Tensor& t, int64_t begin, int64_t length) {
    return t.defined() ? t.narrow(0, begin, length) : at::Tensor();
  };
  if (grad.is_cpu()) {
    // CPU ranks: everything is already on the host; chunks only bound the working set.
    for (int64_t begin = 0; begin < n; begin += chunk_) {
      const int64_t length = std::min(chunk_, n - begin);
      auto p = master.narrow(0, begin, length), m = exp_avg.narrow(0, begin, length),
           v = exp_avg_sq.narrow(0, begin, length);
      host_adamw(p, m, v, grad.narrow(0, begin, length), slice(keep, begin, length),
                 weights.narrow(0, begin, length), step);
    }
    return;
  }
  allocate(grad);
  const c10::Stream stream = current_stream(grad.device());
  auto fetch = [&](int64_t chunk_index) {
    Buffer& buffer = buffers_[chunk_index % 2];
    const int64_t begin = chunk_index * chunk_, length = std::min(chunk_, n - begin);
    buffer.grad.narrow(0, 0, length).copy_(grad.narrow(0, begin, length), /*non_blocking=*/true);
    buffer.landed->record(stream);
  };
  const int64_t chunks = (n + chunk_ - 1) / chunk_;
  if (chunks > 0) fetch(0);
  for (int64_t i = 0; i < chunks; ++i) {
    if (i + 1 < chunks) fetch(i + 1);  // in flight while the host works on chunk i
    Buffer& buffer = buffers_[i % 2];
    const int64_t begin = i * chunk_, length = std::min(chunk_, n - begin);
    buffer.landed->synchronize();
    if (buffer.sent->was_marked_for_recording()) buffer.sent->synchronize();  // chunk i - 2 left
    auto p = master.narrow(0, begin, length), m = exp_avg.narrow(0, begin, length),
         v = exp_avg_sq.narrow(0, begin, length);
    host_adamw(p, m, v, buffer.grad.narrow(0, 0, length), slice(keep, begin, length),
               buffer.weights.narrow(0, 0, length), step);
    weights.narrow(0, begin, length)
        .copy_(buffer.weights.narrow(0, 0, length), /*non_blocking=*/true);
    buffer.sent->record(stream);
  }
  // The pinned buffers are reused by the next slice; the GPU's stream orders the rest.
  for (Buffer& buffer : buffers_) {
    if (buffer.sent && buffer.sent->was_marked_for_recording()) buffer.sent->synchronize();
  }
}

}  // namespace sparsering::trainer

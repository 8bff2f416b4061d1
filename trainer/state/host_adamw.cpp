#include "trainer/state/host_adamw.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <type_traits>

// Function multi-versioning needs GCC or Clang on x86-64 with an ifunc-capable loader (glibc).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define SPARSERING_HOST_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SPARSERING_HOST_VECTOR_CLONES
#endif

namespace sparsering::trainer {
namespace {

// Elements per host task: a few hundred KiB of each stream, so threads split a chunk evenly.
constexpr int64_t kGrain = 1 << 15;
// Elements per inner block: the widened gradient and the fp32 weights of a block stay in L1.
constexpr int64_t kBlock = 1024;

// The step's scalars as torch's CPU kernels use them on fp32 tensors: computed in double, then
// fp32. Without weight decay `decay` is exactly 1, so the multiply leaves the master unchanged.
struct AdamWScalars {
  float decay, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias_correction2, step_size,
      eps;
};

AdamWScalars scalars_of(const HostAdamWStep& s) {
  const auto& o = s.optimizer;
  const double bias_correction1 = 1 - std::pow(o.beta1, s.step);
  return {static_cast<float>(1 - s.lr * o.weight_decay),
          static_cast<float>(o.beta1),
          static_cast<float>(1 - o.beta1),
          static_cast<float>(o.beta2),
          static_cast<float>(1 - o.beta2),
          static_cast<float>(std::sqrt(1 - std::pow(o.beta2, s.step))),
          static_cast<float>(-s.lr / bias_correction1),
          static_cast<float>(o.eps)};
}

// The arithmetic of one block, branch-free so that the compiler vectorises it (this file is built
// with -fno-math-errno so that sqrt is an instruction, not a libm call). On x86-64 it is compiled
// for AVX-512, AVX2 and baseline SSE, and the loader picks the widest the host CPU has.
SPARSERING_HOST_VECTOR_CLONES
void adamw_block(float* __restrict master, float* __restrict exp_avg, float* __restrict exp_avg_sq,
                 const float* __restrict grad, float* __restrict weights, int64_t n,
                 const AdamWScalars& s) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    const float p = master[i] * s.decay;
    const float m = exp_avg[i] * s.beta1 + s.one_minus_beta1 * g;
    const float v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * (g * g);
    const float denom = std::sqrt(v) / s.sqrt_bias_correction2 + s.eps;
    const float updated = p + s.step_size * (m / denom);
    master[i] = updated;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    weights[i] = updated;
  }
}

// bf16 <-> fp32 on the bit patterns (c10::BFloat16's conversions, written so they vectorise):
// widening is exact; narrowing rounds to nearest even and maps NaN to the canonical quiet NaN.
SPARSERING_HOST_VECTOR_CLONES
void widen_bf16(const uint16_t* __restrict in, float* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(in[i]) << 16;
    std::memcpy(&out[i], &bits, sizeof(float));
  }
}

SPARSERING_HOST_VECTOR_CLONES
void narrow_bf16(const float* __restrict in, uint16_t* __restrict out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &in[i], sizeof(float));
    const uint32_t rounded = (bits + (0x7FFFu + ((bits >> 16) & 1u))) >> 16;
    out[i] = in[i] != in[i] ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
  }
}

template <typename T>
void widen(const T* in, float* out, int64_t n) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    widen_bf16(reinterpret_cast<const uint16_t*>(in), out, n);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]);
  }
}

template <typename T>
void narrow(const float* in, T* out, int64_t n) {
  if constexpr (std::is_same_v<T, at::BFloat16>) {
    narrow_bf16(in, reinterpret_cast<uint16_t*>(out), n);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(in[i]);
  }
}

template <typename Grad, typename Weight>
void adamw_loop(float* master, float* exp_avg, float* exp_avg_sq, const Grad* grad,
                const uint8_t* keep, Weight* weights, int64_t n, const HostAdamWStep& s) {
  const AdamWScalars scalars = scalars_of(s);
  const float lambda = static_cast<float>(s.sr_ste_lambda);
  const float scale = static_cast<float>(s.grad_scale);
  const bool sr_ste = keep != nullptr && s.sr_ste_lambda > 0;
  const bool clip = s.grad_scale != 1;
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    alignas(64) float g[kBlock];
    alignas(64) float w[kBlock];
    for (int64_t b = begin; b < end; b += kBlock) {
      const int64_t length = std::min(kBlock, end - b);
      widen(grad + b, g, length);
      // SR-STE before clipping, as add_sr_ste_term runs before the norm and the step.
      if (sr_ste) {
        for (int64_t i = 0; i < length; ++i) g[i] += keep[b + i] ? 0.0f : lambda * master[b + i];
      }
      if (clip) {
        for (int64_t i = 0; i < length; ++i) g[i] *= scale;
      }
      adamw_block(master + b, exp_avg + b, exp_avg_sq + b, g, w, length, scalars);
      if (weights) narrow(w, weights + b, length);
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

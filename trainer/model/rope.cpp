#include "trainer/model/rope.h"

#include <algorithm>
#include <cmath>

namespace sparsering::trainer {
namespace {

// Python's `scalar / tensor` is tensor.reciprocal() * scalar in torch; kept for identical bits.
at::Tensor scalar_over(double scalar, const at::Tensor& tensor) {
  return at::reciprocal(tensor) * scalar;
}

// theta^(-2i/d) as transformers' default RoPE: 1.0 / (base ** (arange(0, d, 2) / d)) in fp32.
at::Tensor default_frequencies(double theta, int64_t head_dim) {
  const auto exponents =
      at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
      static_cast<double>(head_dim);
  return scalar_over(1.0, at::pow(theta, exponents));
}

// Llama 3.1: wavelengths longer than original_context / low_freq_factor are interpolated (divided
// by the factor), shorter than original_context / high_freq_factor kept, a smooth ramp between.
at::Tensor llama3_frequencies(const config::ModelConfig& m) {
  const at::Tensor inv_freq = default_frequencies(m.rope_theta, m.head_dim());
  const double factor = m.rope_scaling_factor, low = m.rope_low_freq_factor,
               high = m.rope_high_freq_factor;
  const auto old_context = static_cast<double>(rope_original_context(m));
  const double low_freq_wavelen = old_context / low, high_freq_wavelen = old_context / high;
  const at::Tensor wavelen = scalar_over(2 * M_PI, inv_freq);
  at::Tensor scaled = at::where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq);
  const at::Tensor smooth = (scalar_over(old_context, wavelen) - low) / (high - low);
  const at::Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
  const at::Tensor medium =
      at::logical_not(wavelen < high_freq_wavelen) * at::logical_not(wavelen > low_freq_wavelen);
  return at::where(medium, smoothed, scaled);
}

// YaRN: dimensions rotating fewer than beta_slow times over the original context are
// interpolated, more than beta_fast times extrapolated, a linear ramp between.
at::Tensor yarn_frequencies(const config::ModelConfig& m) {
  const int64_t dim = m.head_dim();
  const double base = m.rope_theta, factor = m.rope_scaling_factor;
  const auto original = static_cast<double>(rope_original_context(m));
  const auto pos_freqs =
      at::pow(base, at::arange(0, dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
                        static_cast<double>(dim));
  const at::Tensor extrapolation = scalar_over(1.0, pos_freqs);
  const at::Tensor interpolation = scalar_over(1.0, factor * pos_freqs);
  const auto correction_dim = [&](double rotations) {
    return (dim * std::log(original / (rotations * 2 * M_PI))) / (2 * std::log(base));
  };
  double low = correction_dim(m.rope_beta_fast), high = correction_dim(m.rope_beta_slow);
  if (m.rope_truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // transformers' guard against a zero-width ramp
  const at::Tensor ramp = at::clamp(
      (at::arange(dim / 2, at::TensorOptions().dtype(at::kFloat)) - low) / (high - low), 0, 1);
  const at::Tensor extrapolation_factor = 1 - ramp;
  return interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
}

}  // namespace

int64_t rope_original_context(const config::ModelConfig& model) {
  return model.rope_original_max_context > 0 ? model.rope_original_max_context : model.max_context;
}

double yarn_attention_factor(const config::ModelConfig& model) {
  if (model.rope_attention_factor > 0) return model.rope_attention_factor;
  return model.rope_scaling_factor <= 1 ? 1.0 : 0.1 * std::log(model.rope_scaling_factor) + 1.0;
}

RopeFrequencies rope_frequencies(const config::ModelConfig& model) {
  switch (model.rope_type) {
    case config::RopeType::kDefault:
      return {default_frequencies(model.rope_theta, model.head_dim()), 1.0};
    case config::RopeType::kLinear:
      return {default_frequencies(model.rope_theta, model.head_dim()) / model.rope_scaling_factor,
              1.0};
    case config::RopeType::kLlama3:
      return {llama3_frequencies(model), 1.0};
    case config::RopeType::kYarn:
      return {yarn_frequencies(model), yarn_attention_factor(model)};
  }
  throw std::logic_error("rope_frequencies: unknown rope type");
}

std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions,
                                              const config::ModelConfig& model) {
  const RopeFrequencies frequencies = rope_frequencies(model);
  // position x inverse frequency in fp32, as transformers' rotary embedding forward.
  const auto angles = positions.to(at::kFloat).unsqueeze(1) *
                      frequencies.inverse_frequency.to(positions.device()).unsqueeze(0);
  return {at::cos(angles) * frequencies.attention_factor,
          at::sin(angles) * frequencies.attention_factor};
}

}  // namespace sparsering::trainer

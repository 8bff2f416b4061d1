#include "trainer/nm/nm_sparsity.h"

#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "configs/user_error.h"
#include "trainer/nm/nm_mask.h"

namespace sparsering::trainer {
namespace {

// w_eff = mask * w + beta * (1 - mask) * w, kept weights bit-exact and, at beta = 0, pruned
// weights exactly +0 so the forward weight is strictly N:M.
at::Tensor soft_masked(const at::Tensor& weight, const at::Tensor& keep_mask, double beta) {
  if (beta == 0.0) return apply_keep_mask(weight, keep_mask);
  // The scalar product is computed in fp32 even for bf16 weights, then rounded once.
  return at::where(keep_mask, weight, weight * beta);
}

// The effective weight with the gradient semantics chosen in the config (see
// NMSparsity::effective_weight and docs/algorithms.md, 4.3).
class EffectiveWeightFunction : public torch::autograd::Function<EffectiveWeightFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* context, const at::Tensor& weight,
                            const at::Tensor& keep_mask, double beta, bool decayed) {
    context->saved_data["keep_mask"] = keep_mask;
    context->saved_data["beta"] = beta;
    context->saved_data["decayed"] = decayed;
    return soft_masked(weight, keep_mask, beta);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    at::Tensor grad_weight = grad;  // STRAIGHT_THROUGH: d(w_eff)/dw := identity
    if (context->saved_data["decayed"].toBool()) {
      grad_weight = soft_masked(grad, context->saved_data["keep_mask"].toTensor(),
                                context->saved_data["beta"].toDouble());
    }
    return {grad_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

void require_fp32_master(const NamedWeight& named) {
  if (!named.weight.defined() || c10::isReducedFloatingType(named.weight.scalar_type())) {
    throw std::invalid_argument(
        "NMSparsity: " + named.name +
        " must be the fp32 master weight (MasterWeightOptimizer::master_weights()), not a "
        "reduced-precision model weight: masks and the SR-STE term are computed in fp32");
  }
}

}  // namespace

NMSparsity::NMSparsity(const config::NMSparsityConfig& config)
    : config_(config), schedule_(config), beta_(schedule_.beta(0)) {}

bool NMSparsity::covers(const std::string& weight_name) const {
  static const std::string kSuffix = ".weight";
  if (!config_.enabled || weight_name.size() <= kSuffix.size() ||
      weight_name.compare(weight_name.size() - kSuffix.size(), kSuffix.size(), kSuffix) != 0) {
    return false;
  }
  const std::string module_name = weight_name.substr(0, weight_name.size() - kSuffix.size());
  const std::string projection = module_name.substr(module_name.rfind('.') + 1);
  return std::find(config_.layers.begin(), config_.layers.end(), projection) !=
         config_.layers.end();
}

std::vector<NamedWeight> NMSparsity::sparse_weights(
    const std::vector<std::string>& names, const std::vector<at::Tensor>& fp32_weights) const {
  if (names.size() != fp32_weights.size()) {
    throw std::invalid_argument("NMSparsity::sparse_weights: " + std::to_string(names.size()) +
                                " names for " + std::to_string(fp32_weights.size()) + " weights");
  }
  std::vector<NamedWeight> covered;
  for (size_t i = 0; i < names.size(); ++i) {
    if (covers(names[i])) covered.push_back({names[i], fp32_weights[i]});
  }
  return covered;
}

void NMSparsity::update_masks(const std::vector<NamedWeight>& fp32_weights, int64_t step) {
  std::map<std::string, at::Tensor> masks;
  for (const NamedWeight& named : fp32_weights) {
    require_fp32_master(named);
    if (!covers(named.name)) {
      throw std::invalid_argument("NMSparsity::update_masks: " + named.name +
                                  " is not a sparse layer; pass sparse_weights(...) only");
    }
    masks[named.name] = nm_keep_mask(named.weight, config_.n, config_.m);
  }
  keep_masks_ = std::move(masks);
  beta_ = schedule_.beta(step);
  step_ = step;
}

void NMSparsity::set_masks(std::map<std::string, at::Tensor> keep_masks, int64_t step) {
  keep_masks_ = std::move(keep_masks);
  beta_ = schedule_.beta(step);
  step_ = step;
}

at::Tensor NMSparsity::effective_weight(const std::string& weight_name,
                                        const at::Tensor& weight) const {
  const at::Tensor& keep = keep_mask(weight_name);
  if (!weight.sizes().equals(keep.sizes())) {
    throw std::invalid_argument("NMSparsity::effective_weight: " + weight_name + " has shape " +
                                c10::str(weight.sizes()) + " but its mask " +
                                c10::str(keep.sizes()));
  }
  const bool decayed = config_.gradient_semantics == config::NMGradientSemantics::kDecayed;
  return EffectiveWeightFunction::apply(weight, keep, beta_, decayed);
}

void NMSparsity::add_sr_ste_term(const std::vector<NamedWeight>& fp32_weights) const {
  if (config_.mode != config::NMMode::kSrSte) return;
  at::NoGradGuard no_grad;
  for (const NamedWeight& named : fp32_weights) {
    require_fp32_master(named);
    const at::Tensor pruned = named.weight.masked_fill(keep_mask(named.name), 0);
    at::Tensor& grad = named.weight.mutable_grad();
    if (grad.defined()) {
      grad.add_(pruned, config_.sr_ste_lambda);
    } else {
      grad = pruned.mul_(config_.sr_ste_lambda);
    }
  }
}

at::Tensor NMSparsity::strict_weight(const at::Tensor& fp32_weight) const {
  at::NoGradGuard no_grad;
  return apply_keep_mask(fp32_weight.detach(), nm_keep_mask(fp32_weight, config_.n, config_.m));
}

const at::Tensor& NMSparsity::keep_mask(const std::string& weight_name) const {
  const auto found = keep_masks_.find(weight_name);
  if (found == keep_masks_.end()) {
    throw std::logic_error("NMSparsity: no mask for " + weight_name +
                           "; call update_masks with its fp32 weight before the forward");
  }
  return found->second;
}

void NMSparsity::restore(const NMScheduleState& state) {
  const double expected = schedule_.beta(state.step);
  // The same formula on the same inputs; the tolerance only absorbs libm differences between
  // the machine that wrote the checkpoint and this one.
  if (std::abs(expected - state.beta) > 1e-12) {
    std::ostringstream message;
    message.precision(17);
    message << "nm_sparsity: the checkpoint has beta = " << state.beta << " at step " << state.step
            << " but the configured schedule gives " << expected
            << "; resume with the nm_sparsity settings the checkpoint was trained with";
    throw UserError(message.str());
  }
  step_ = state.step;
  beta_ = state.beta;
  keep_masks_.clear();  // masks come from the restored weights at the next update_masks
}

}  // namespace sparsering::trainer

// Progressive gradient-flow N:M weight sparsity of chosen linear layers (docs/algorithms.md, 4;
// modes and fields in configs/sparsering.proto, message NMSparsity).
//
// Each step the training loop recomputes the masks from the fp32 master weights
// (update_masks, before the forward), the projections use effective_weight() in their forward,
// and for SR_STE the loop adds the lambda term to the final fp32 gradients (add_sr_ste_term,
// after gradient sync and loss-scale unscaling, before clipping). strict_weight() exports the
// strictly N:M weight. Weights are identical on every rank after the synced optimizer step and
// the masks break ties deterministically, so every rank computes the same masks without talking.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "configs/config.h"
#include "trainer/nm/nm_schedule.h"

namespace sparsering::trainer {

struct NamedWeight {
  std::string name;   // as Module::named_parameters() names it: "block0.attention.q_proj.weight"
  at::Tensor weight;  // fp32 master weight [out, in]
};

class NMSparsity {
 public:
  explicit NMSparsity(const config::NMSparsityConfig& config);

  // Whether `weight_name` ("<prefix>.<projection>.weight") is the weight of a projection listed in
  // nm_sparsity.layers (and sparsity is enabled).
  bool covers(const std::string& weight_name) const;
  // The covered entries of parallel lists `names` (named_parameters().keys()) and `fp32_weights`
  // (MasterWeightOptimizer::master_weights(), same order).
  std::vector<NamedWeight> sparse_weights(const std::vector<std::string>& names,
                                          const std::vector<at::Tensor>& fp32_weights) const;

  // Before the forward of training step `step` (counted from 1): recomputes every mask from the
  // current fp32 weights and sets beta to the schedule's value at `step`.
  void update_masks(const std::vector<NamedWeight>& fp32_weights, int64_t step);

  // update_masks for masks computed elsewhere: the sharded optimizer computes each rank's slice of
  // every mask from its slice of the fp32 masters and gathers them (the same nm_keep_mask on the
  // same values, so the masks equal update_masks'). `keep_masks` maps every covered weight name
  // to its boolean mask.
  void set_masks(std::map<std::string, at::Tensor> keep_masks, int64_t step);
  const config::NMSparsityConfig& config() const { return config_; }

  // The weight the projection `weight_name` multiplies with in this step's forward, for `weight`
  // (the model's parameter, any floating dtype): mask * w + beta * (1 - mask) * w.
  // Gradient to `weight` by nm_sparsity.gradient_semantics (docs/algorithms.md, 4.3):
  //   STRAIGHT_THROUGH  dL/dw = dL/dw_eff for every weight, kept or pruned: the published code's
  //                     backward returns grad_output unchanged (its MDGF autograd functions are
  //                     straight-through), so beta acts only through the forward value (and
  //                     thus through dL/dw_eff and the activation gradient).
  //   DECAYED           dL/dw = dL/dw_eff for kept weights and beta * dL/dw_eff for pruned ones,
  //                     i.e. plain autograd through w * (mask + beta (1 - mask)) with the mask
  //                     held constant; for STE and SR_STE (beta = 0) pruned weights then get no
  //                     gradient from the loss at all.
  at::Tensor effective_weight(const std::string& weight_name, const at::Tensor& weight) const;

  // SR_STE only (a no-op otherwise): grad += sr_ste_lambda * (1 - mask) * w on each weight's
  // .grad(), with this step's masks (SR-STE, docs/algorithms.md, 4.4). Call it on the final fp32
  // gradients: after gradient sync (the term is per replica, not to be summed) and after any
  // loss-scale unscaling (otherwise the term shrinks to lambda / scale, as it does in the published
  // PGF code under AMP), before the norm and clipping, which include it as in the published code.
  void add_sr_ste_term(const std::vector<NamedWeight>& fp32_weights) const;

  // The strictly N:M weight mask * w, with the mask recomputed from `fp32_weight` itself (for
  // export after the last optimizer step, whose update the last step's masks have not seen).
  at::Tensor strict_weight(const at::Tensor& fp32_weight) const;

  // This step's mask of `weight_name` (true = kept); throws if update_masks has not computed it.
  const at::Tensor& keep_mask(const std::string& weight_name) const;
  double beta() const { return beta_; }
  int64_t step() const { return step_; }

  NMScheduleState state() const { return {step_, beta_}; }
  // Continues from a checkpoint's state. Throws UserError when the configured schedule gives a
  // different beta at that step (the nm_sparsity config changed since the checkpoint).
  void restore(const NMScheduleState& state);

 private:
  config::NMSparsityConfig config_;
  NMSchedule schedule_;
  int64_t step_ = 0;
  double beta_;
  std::map<std::string, at::Tensor> keep_masks_;
};

}  // namespace sparsering::trainer

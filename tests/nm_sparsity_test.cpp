// N:M weight sparsity with progressive gradient flow (trainer/nm_*.h, docs/algorithms.md, 4): mask
// invariants, beta schedules, gradients of every mode and semantics against hand-computed ones,
// the SR-STE term, hard pruning, checkpoint state and the model's use of the effective weights.
#include "trainer/nm/nm_sparsity.h"

#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "configs/user_error.h"
#include "parallel/process_groups.h"
#include "trainer/model/model.h"
#include "trainer/nm/nm_mask.h"
#include "trainer/nm/nm_schedule.h"

namespace sparsering {
namespace {

using config::NMGradientSemantics;
using config::NMMode;
using trainer::NamedWeight;
using trainer::NMSparsity;

const std::string kQProj = "block0.attention.q_proj.weight";

config::NMSparsityConfig nm_config(
    NMMode mode, NMGradientSemantics semantics = NMGradientSemantics::kStraightThrough) {
  config::NMSparsityConfig c;
  c.enabled = true;
  c.n = 2;
  c.m = 4;
  c.layers = {"q_proj"};
  c.mode = mode;
  c.gradient_semantics = semantics;
  c.sr_ste_lambda = 0.125;  // large and a power of two: the term is visible and exact
  c.kappa = 0.01;
  c.sdgf_interval = 10;
  c.sdgf_step = 0.25;
  c.sdgf_factor = 0.5;
  c.hard_prune_step = -1;
  return c;
}

// A [2, 8] tensor from its rows.
at::Tensor two_rows(std::vector<double> first, const std::vector<double>& second) {
  first.insert(first.end(), second.begin(), second.end());
  return at::tensor(first, at::kDouble).view({2, 8});
}

// The keep rule written out per element: w_i is kept when fewer than n group members rank before
// it, ranking by larger |w| first and, among equal |w|, the lower input index first.
at::Tensor reference_mask(const at::Tensor& weight, int64_t n, int64_t m) {
  const auto w = weight.to(at::kDouble).abs().contiguous();
  auto keep = at::zeros(weight.sizes(), at::kBool);
  const auto a = w.accessor<double, 2>();
  auto k = keep.accessor<bool, 2>();
  for (int64_t row = 0; row < w.size(0); ++row) {
    for (int64_t start = 0; start < w.size(1); start += m) {
      for (int64_t i = start; i < start + m; ++i) {
        int64_t before = 0;
        for (int64_t j = start; j < start + m; ++j) {
          before += a[row][j] > a[row][i] || (a[row][j] == a[row][i] && j < i);
        }
        k[row][i] = before < n;
      }
    }
  }
  return keep;
}

TEST(NMMask, KeepsExactlyTheNLargestOfEveryGroupAlongTheInputDimension) {
  at::manual_seed(1);
  const auto weight = at::randn({16, 64});
  for (const auto& [n, m] : std::vector<std::pair<int64_t, int64_t>>{{2, 4}, {1, 8}, {4, 8}}) {
    SCOPED_TRACE(std::to_string(n) + ":" + std::to_string(m));
    const auto keep = trainer::nm_keep_mask(weight, n, m);
    ASSERT_EQ(keep.sizes(), weight.sizes());
    EXPECT_TRUE(keep.equal(reference_mask(weight, n, m)));
    const auto groups = keep.view({16, 64 / m, m});
    EXPECT_TRUE(groups.sum(-1).eq(n).all().item<bool>());
    const auto magnitude = weight.abs().view({16, 64 / m, m});
    const auto smallest_kept = magnitude.masked_fill(groups.logical_not(), INFINITY).amin(-1);
    const auto largest_pruned = magnitude.masked_fill(groups, -1).amax(-1);
    EXPECT_TRUE(smallest_kept.ge(largest_pruned).all().item<bool>());
  }
  // Groups are consecutive inputs of one row, not of one column.
  const auto row_groups =
      two_rows({1., -9., 3., 2., 0., 5., -6., 4.}, {8., 7., -1., 0., 1., 2., 3., 4.});
  const auto expected = two_rows({0, 1, 1, 0, 0, 1, 1, 0}, {1, 1, 0, 0, 0, 0, 1, 1}).to(at::kBool);
  EXPECT_TRUE(trainer::nm_keep_mask(row_groups, 2, 4).equal(expected));
}

TEST(NMMask, BreaksTiesByInputIndexSoIdenticalWeightsGiveIdenticalMasks) {
  // Equal magnitudes, signs included: the lower input index wins.
  const auto tied =
      two_rows({1., -1., 1., -1., 0., 0., 0., 0.}, {-2., 3., 2., 3., 5., 5., -5., 1.});
  const auto expected = two_rows({1, 1, 0, 0, 1, 1, 0, 0}, {0, 1, 0, 1, 1, 1, 0, 0}).to(at::kBool);
  EXPECT_TRUE(trainer::nm_keep_mask(tied, 2, 4).equal(expected));
  // Many ties (few distinct values), also in bf16: matches the element-wise rule, and a copy of
  // the weights (another rank's replica) gives the same mask.
  at::manual_seed(3);
  const auto few_values = at::randint(-2, 3, {64, 256}).to(at::kFloat);
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    const auto weight = few_values.to(dtype);
    const auto keep = trainer::nm_keep_mask(weight, 2, 8);
    EXPECT_TRUE(keep.equal(reference_mask(weight, 2, 8)));
    EXPECT_TRUE(keep.equal(trainer::nm_keep_mask(weight.clone(), 2, 8)));
  }
  EXPECT_THROW(trainer::nm_keep_mask(at::randn({4, 6}), 2, 4), std::invalid_argument);
}

TEST(NMSchedule, BetaFollowsEveryModeAtChosenSteps) {
  struct Case {
    NMMode mode;
    int hard_prune_step;
    int64_t step;
    double beta;
  };
  // kappa 0.01, interval 10, stepwise drop 0.25, geometric factor 0.5; clock t = step - 1.
  const std::vector<Case> cases = {
      {NMMode::kSte, -1, 1, 0.0},
      {NMMode::kSte, -1, 500, 0.0},
      {NMMode::kSrSte, -1, 1, 0.0},
      {NMMode::kMdgfLinear, -1, 0, 1.0},
      {NMMode::kMdgfLinear, -1, 1, 1.0},
      {NMMode::kMdgfLinear, -1, 31, 0.7},
      {NMMode::kMdgfLinear, -1, 101, 0.0},
      {NMMode::kMdgfLinear, -1, 5000, 0.0},
      {NMMode::kMdgfExponential, -1, 1, 1.0},
      {NMMode::kMdgfExponential, -1, 51, std::exp(-0.5)},
      {NMMode::kMdgfExponential, -1, 1001, std::exp(-10.0)},
      {NMMode::kSdgfStepwise, -1, 10, 1.0},
      {NMMode::kSdgfStepwise, -1, 11, 0.75},
      {NMMode::kSdgfStepwise, -1, 30, 0.5},
      {NMMode::kSdgfStepwise, -1, 41, 0.0},
      {NMMode::kSdgfStepwise, -1, 1000, 0.0},
      {NMMode::kSdgfGeometric, -1, 10, 1.0},
      {NMMode::kSdgfGeometric, -1, 11, 0.5},
      {NMMode::kSdgfGeometric, -1, 31, 0.125},
      {NMMode::kMdgfExponential, 25, 24, std::exp(-0.23)},
      {NMMode::kMdgfExponential, 25, 25, 0.0},
      {NMMode::kMdgfExponential, 25, 26, 0.0},
      {NMMode::kSdgfGeometric, 25, 24, 0.25},
      {NMMode::kSdgfGeometric, 25, 25, 0.0},
      {NMMode::kMdgfLinear, 0, 1, 0.0},
  };
  for (const Case& c : cases) {
    auto config = nm_config(c.mode);
    config.hard_prune_step = c.hard_prune_step;
    const double beta = trainer::NMSchedule(config).beta(c.step);
    EXPECT_NEAR(beta, c.beta, 1e-15) << "mode " << static_cast<int>(c.mode) << ", hard prune "
                                     << c.hard_prune_step << ", step " << c.step;
    EXPECT_GE(beta, 0.0);
  }
}

// A tiny q_proj layer: W [4, 8] (double, its own fp32-or-wider master), x [3, 8] and the loss
// L = sum(c * (x W_eff^T)), so dL/dW_eff = c^T x and dL/dx = c W_eff by hand.
struct TinyLayer {
  at::Tensor weight, x, c;
  TinyLayer() {
    at::manual_seed(5);
    weight = at::randn({4, 8}, at::kDouble).requires_grad_(true);
    x = at::randn({3, 8}, at::kDouble).requires_grad_(true);
    c = at::randn({3, 4}, at::kDouble);
  }
  std::vector<NamedWeight> named() const { return {{kQProj, weight}}; }
};

TEST(NMSparsity, PrunedWeightGradientsFollowEachModeAndSemantics) {
  struct Case {
    NMMode mode;
    int64_t step;
    double beta;
  };
  const std::vector<Case> cases = {
      {NMMode::kSte, 40, 0.0},
      {NMMode::kSrSte, 40, 0.0},
      {NMMode::kMdgfLinear, 31, 0.7},
      {NMMode::kMdgfLinear, 200, 0.0},
      {NMMode::kMdgfExponential, 51, std::exp(-0.5)},
      {NMMode::kSdgfStepwise, 11, 0.75},
      {NMMode::kSdgfGeometric, 31, 0.125},
  };
  for (const auto semantics :
       {NMGradientSemantics::kStraightThrough, NMGradientSemantics::kDecayed}) {
    for (const Case& c : cases) {
      SCOPED_TRACE("mode " + std::to_string(static_cast<int>(c.mode)) + ", semantics " +
                   std::to_string(static_cast<int>(semantics)));
      TinyLayer layer;
      NMSparsity nm(nm_config(c.mode, semantics));
      nm.update_masks(layer.named(), c.step);
      ASSERT_DOUBLE_EQ(nm.beta(), c.beta);
      const auto keep = nm.keep_mask(kQProj);
      const auto w = layer.weight.detach();
      // By hand: w_eff = mask w + beta (1 - mask) w.
      const auto mask = keep.to(at::kDouble);
      const auto expected_weight = mask * w + c.beta * (1 - mask) * w;
      const auto effective = nm.effective_weight(kQProj, layer.weight);
      EXPECT_TRUE(at::allclose(effective, expected_weight, 0, 1e-15));
      (layer.c * at::matmul(layer.x, effective.t())).sum().backward();

      const auto g = at::matmul(layer.c.t(), layer.x.detach());  // dL/dW_eff
      const auto expected_grad = semantics == NMGradientSemantics::kStraightThrough
                                     ? g                                    // published code
                                     : mask * g + c.beta * (1 - mask) * g;  // autograd variant
      EXPECT_TRUE(at::allclose(layer.weight.grad(), expected_grad, 0, 1e-14));
      // The decay reaches backprop through the activation gradient in both semantics.
      EXPECT_TRUE(at::allclose(layer.x.grad(), at::matmul(layer.c, expected_weight), 0, 1e-14));
    }
  }
}

TEST(NMSparsity, SrSteTermIsAddedOnlyToPrunedWeightsAndOnlyInSrSteMode) {
  TinyLayer layer;
  const auto w = layer.weight.detach();
  const auto loss_grad = at::randn({4, 8}, at::kDouble);
  NMSparsity sr_ste(nm_config(NMMode::kSrSte));
  sr_ste.update_masks(layer.named(), 7);
  const auto keep = sr_ste.keep_mask(kQProj);

  layer.weight.mutable_grad() = loss_grad.clone();
  sr_ste.add_sr_ste_term(layer.named());
  const auto grad = layer.weight.grad();
  EXPECT_TRUE(grad.masked_select(keep).equal(loss_grad.masked_select(keep)));  // kept: untouched
  const auto pruned = keep.logical_not();
  EXPECT_TRUE(at::allclose(grad.masked_select(pruned),
                           (loss_grad + 0.125 * w).masked_select(pruned), 0, 1e-15));
  // No gradient yet: the term alone.
  layer.weight.mutable_grad() = at::Tensor();
  sr_ste.add_sr_ste_term(layer.named());
  EXPECT_TRUE(layer.weight.grad().equal(0.125 * w.masked_fill(keep, 0)));

  NMSparsity ste(nm_config(NMMode::kSte));
  ste.update_masks(layer.named(), 7);
  layer.weight.mutable_grad() = loss_grad.clone();
  ste.add_sr_ste_term(layer.named());
  EXPECT_TRUE(layer.weight.grad().equal(loss_grad));
  // The term needs the fp32 master, not a bf16 model weight.
  EXPECT_THROW(sr_ste.add_sr_ste_term({{kQProj, w.to(at::kBFloat16)}}), std::invalid_argument);
}

TEST(NMSparsity, HardPruneMakesTheForwardWeightsStrictlyNM) {
  auto config = nm_config(NMMode::kMdgfExponential);
  config.m = 8;
  config.hard_prune_step = 5;
  NMSparsity nm(config);
  at::manual_seed(11);
  const auto master = at::randn({16, 64});
  const std::vector<NamedWeight> named = {{kQProj, master}};
  const auto nonzeros_per_group = [](const at::Tensor& weight) {
    return weight.to(at::kFloat).ne(0).view({16, 8, 8}).sum(-1);
  };

  nm.update_masks(named, 4);
  EXPECT_GT(nm.beta(), 0.0);
  EXPECT_TRUE(nonzeros_per_group(nm.effective_weight(kQProj, master)).eq(8).all().item<bool>());

  nm.update_masks(named, 5);
  EXPECT_EQ(nm.beta(), 0.0);
  const auto strict = nm.strict_weight(master);
  EXPECT_TRUE(nonzeros_per_group(strict).eq(2).all().item<bool>());
  EXPECT_TRUE(strict.equal(master * nm.keep_mask(kQProj)));
  EXPECT_TRUE(nm.effective_weight(kQProj, master).equal(strict));
  // A bf16 model weight is masked by its fp32 master's mask, bit-exactly.
  const auto model_weight = master.to(at::kBFloat16);
  EXPECT_TRUE(nm.effective_weight(kQProj, model_weight)
                  .equal(model_weight.masked_fill(nm.keep_mask(kQProj).logical_not(), 0)));
}

TEST(NMSparsity, CheckpointStateRestoresTheSameBeta) {
  auto config = nm_config(NMMode::kMdgfExponential);
  config.kappa = 0.0137;
  TinyLayer layer;
  NMSparsity trained(config);
  trained.update_masks(layer.named(), 37);
  const std::string saved = trained.state().to_string();

  NMSparsity resumed(config);
  resumed.restore(trainer::NMScheduleState::from_string(saved));
  EXPECT_EQ(resumed.step(), 37);
  EXPECT_EQ(resumed.beta(), trained.beta());                  // bit for bit
  EXPECT_THROW(resumed.keep_mask(kQProj), std::logic_error);  // masks come from the weights
  trained.update_masks(layer.named(), 38);
  resumed.update_masks(layer.named(), 38);
  EXPECT_EQ(resumed.beta(), trained.beta());
  EXPECT_TRUE(resumed.keep_mask(kQProj).equal(trained.keep_mask(kQProj)));

  auto changed = config;
  changed.kappa = 0.02;
  NMSparsity other(changed);
  EXPECT_THROW(other.restore(trainer::NMScheduleState::from_string(saved)), UserError);
  for (const std::string bad :
       {"", "step=3", "step=x beta=0.5", "step=3 beta=", "step=3 beta=1 z"}) {
    EXPECT_THROW(trainer::NMScheduleState::from_string(bad), UserError) << bad;
  }
}

TEST(NMSparsity, CoversOnlyListedProjectionsWhenEnabled) {
  auto config = nm_config(NMMode::kSte);
  config.layers = {"q_proj", "down_proj"};
  NMSparsity nm(config);
  EXPECT_TRUE(nm.covers("block3.attention.q_proj.weight"));
  EXPECT_TRUE(nm.covers("block0.mlp.down_proj.weight"));
  EXPECT_FALSE(nm.covers("block0.attention.k_proj.weight"));
  EXPECT_FALSE(nm.covers("block0.attention.q_proj.bias"));
  EXPECT_FALSE(nm.covers("embedding.weight"));
  const auto sparse =
      nm.sparse_weights({"a.q_proj.weight", "b.k_proj.weight", "c.down_proj.weight"},
                        {at::ones({2, 4}), at::ones({2, 4}), at::ones({2, 4})});
  ASSERT_EQ(sparse.size(), 2u);
  EXPECT_EQ(sparse[1].name, "c.down_proj.weight");
  EXPECT_THROW(nm.update_masks({{"b.k_proj.weight", at::ones({2, 4})}}, 1), std::invalid_argument);
  config.enabled = false;
  EXPECT_FALSE(NMSparsity(config).covers("block3.attention.q_proj.weight"));
}

// The model routes exactly the listed projections through the effective weight: with beta = 0 it
// computes what a dense model holding the strictly N:M weights of those layers computes.
TEST(NMSparsity, ModelUsesTheMaskedWeightsOfListedLayers) {
  config::ModelConfig model{};
  model.num_layers = 2;
  model.hidden_size = 32;
  model.num_heads = 2;
  model.num_kv_heads = 1;
  model.ffn_hidden_size = 64;
  model.vocab_size = 50;
  model.rope_theta = 10000;
  model.rope_scaling_factor = 1;
  model.max_context = 128;
  model.tie_embeddings = true;
  model.rms_norm_eps = 1e-6;
  model.init_std = 0.1;
  model.activation_checkpointing = false;
  // Qwen2's q/k/v biases: they stay dense (N:M covers weights only) and still add to the output.
  model.attention_bias = true;
  const int64_t block = 64, tokens = 128;
  parallel::ProcessGroups groups({1, 1, 0}, /*use_nccl=*/false);
  const parallel::TokenLayout layout(config::LayoutKind::kContiguous, tokens / block, block, 1);
  const auto make_rings = [&] {
    std::vector<std::shared_ptr<parallel::RingAttention>> rings;
    for (int i = 0; i < model.num_layers; ++i) {
      rings.push_back(std::make_shared<parallel::RingAttention>(parallel::RingAttentionConfig{},
                                                                groups.ring_groups(), layout));
    }
    return rings;
  };
  auto config = nm_config(NMMode::kSte);
  config.layers = {"k_proj", "o_proj", "up_proj"};
  NMSparsity nm(config);
  at::manual_seed(4);
  trainer::Decoder sparse(model, make_rings(), &nm);
  trainer::initialize_weights(sparse, model.init_std);
  trainer::Decoder dense(model, make_rings());
  const auto named = sparse->named_parameters();
  int biases = 0;
  {
    at::NoGradGuard no_grad;
    for (const auto& p : named) {
      if (p.key().find(".bias") == std::string::npos) continue;
      EXPECT_TRUE(at::equal(p.value(), at::zeros_like(p.value()))) << p.key();  // as transformers
      EXPECT_FALSE(nm.covers(p.key())) << p.key();
      p.value().normal_(0, 0.5);
      ++biases;
    }
  }
  EXPECT_EQ(biases, 3 * model.num_layers);  // q, k and v; o_proj has none
  const auto sparse_weights = nm.sparse_weights(named.keys(), named.values());
  ASSERT_EQ(sparse_weights.size(), 3u * model.num_layers);
  nm.update_masks(sparse_weights, 1);
  {
    at::NoGradGuard no_grad;
    for (auto& p : dense->named_parameters()) {
      const auto& source = named[p.key()];
      p.value().copy_(nm.covers(p.key()) ? nm.strict_weight(source) : source);
    }
  }
  trainer::StepContext context;
  std::tie(context.rope_cos, context.rope_sin) =
      trainer::rope_tables(layout.positions_of(0), model);
  const auto input = at::randint(0, model.vocab_size, {1, tokens});
  const auto sparse_out = sparse->forward(input, context);
  EXPECT_TRUE(at::allclose(sparse_out, dense->forward(input, context), 1e-5, 1e-6));
  // And it is not the dense model's output: the masks changed the computation.
  at::NoGradGuard no_grad;
  trainer::Decoder unmasked(model, make_rings());
  for (auto& p : unmasked->named_parameters()) p.value().copy_(named[p.key()]);
  EXPECT_FALSE(at::allclose(sparse_out, unmasked->forward(input, context), 1e-3, 1e-4));
}

}  // namespace
}  // namespace sparsering

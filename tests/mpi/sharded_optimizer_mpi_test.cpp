// The sharded model state (parallel.zero_stage 1-3, with and without optimizer.offload) against
// the replicated one (stage 0) on 2, 4 and 8 MPI ranks: the same random per-rank gradients for a
// few steps give the same weights, gradient norms and N:M masks, and each rank holds its share of
// the state. Gradient sums over ranks may round in another order (all-reduce against
// reduce-scatter), so weights are compared to 1e-6 relative; masks must be identical.
#include <gtest/gtest.h>

#include "configs/config.h"
#include "parallel/communicator.h"
#include "trainer/model/model.h"
#include "trainer/nm/nm_sparsity.h"
#include "trainer/state/replicated_optimizer.h"
#include "trainer/state/sharded_optimizer.h"

namespace sparsering::trainer {
namespace {

// Odd sizes so buckets need padding; hidden 24 and FFN 40 are multiples of the N:M group of 4.
const std::vector<std::pair<std::string, std::vector<int64_t>>> kParameters = {
    {"embedding.weight", {50, 24}},
    {"block0.attention_norm.weight", {24}},
    {"block0.attention.q_proj.weight", {24, 24}},
    {"block0.mlp.up_proj.weight", {40, 24}},
    {"block0.mlp.down_proj.weight", {24, 40}},
    {"block1.attention_norm.weight", {24}},
    {"block1.mlp.up_proj.weight", {40, 24}},
    {"block1.mlp.down_proj.weight", {24, 40}},
    {"final_norm.weight", {24}},
    {"lm_head.weight", {50, 24}}};

config::Experiment experiment(int stage, bool offload, bool nm) {
  std::vector<std::string> overrides = {"parallel.zero_stage=" + std::to_string(stage),
                                        "optimizer.grad_clip=0.5", "optimizer.weight_decay=0.1",
                                        "model.activation_checkpointing=true"};
  if (offload) overrides.push_back("optimizer.offload=CPU");
  if (nm) {
    overrides.insert(overrides.end(),
                     {"nm_sparsity.enabled=true", "nm_sparsity.mode=SR_STE",
                      "nm_sparsity.layers=up_proj,down_proj", "nm_sparsity.sr_ste_lambda=0.05"});
  }
  return config::load_experiment(config::embedded_tiny_config(), "test", overrides);
}

std::vector<std::string> names() {
  std::vector<std::string> out;
  for (const auto& [name, shape] : kParameters) out.push_back(name);
  return out;
}

std::vector<at::Tensor> initial_parameters() {
  at::manual_seed(7);
  std::vector<at::Tensor> out;
  for (const auto& [name, shape] : kParameters) out.push_back(at::randn(shape).requires_grad_());
  return out;
}

at::Tensor gradient_of(int rank, int step, size_t parameter) {
  at::manual_seed(1000 * rank + 10 * step + static_cast<int64_t>(parameter));
  return at::randn(kParameters[parameter].second);
}

struct TrainingRun {
  std::vector<at::Tensor> parameters = initial_parameters();
  std::unique_ptr<NMSparsity> nm;
  std::unique_ptr<TrainingOptimizer> optimizer;
  std::vector<double> norms;
};

// One training step's optimizer side with this rank's gradients: through the layers' backward
// hooks when the optimizer reduces layer by layer, as the model's checkpointed blocks call them.
void train_step(TrainingRun& run, int rank, int step) {
  auto& opt = *run.optimizer;
  opt.zero_grad();
  opt.update_nm_masks(step);
  LayerGather* gather = opt.layer_gather();
  for (int layer = 1; layer >= 0; --layer) {
    if (gather) gather->acquire(layer);
    for (size_t i = 0; i < kParameters.size(); ++i) {
      if (kParameters[i].first.rfind("block" + std::to_string(layer) + ".", 0) == 0) {
        run.parameters[i].mutable_grad() = gradient_of(rank, step, i);
      }
    }
    if (gather) gather->backward_done(layer);
  }
  for (size_t i = 0; i < kParameters.size(); ++i) {
    if (kParameters[i].first.rfind("block", 0) != 0) {
      run.parameters[i].mutable_grad() = gradient_of(rank, step, i);
    }
  }
  opt.synchronize_gradients();
  opt.add_sr_ste_term();
  const double norm = opt.gradient_norm();
  run.norms.push_back(norm);
  opt.step(/*lr=*/0.01, /*max_norm=*/0.5, norm);
}

class ShardedOptimizerTest : public ::testing::TestWithParam<std::tuple<int, bool, bool>> {
 protected:
  parallel::Communicator world_{"world", MPI_COMM_WORLD, false};
};

TEST_P(ShardedOptimizerTest, StepsLikeTheReplicatedOptimizer) {
  const auto [stage, offload, nm] = GetParam();
  const auto reference_config = experiment(0, false, nm);
  const auto sharded_config = experiment(stage, offload, nm);
  TrainingRun reference, sharded;
  if (nm) {
    reference.nm = std::make_unique<NMSparsity>(reference_config.nm_sparsity);
    sharded.nm = std::make_unique<NMSparsity>(sharded_config.nm_sparsity);
  }
  reference.optimizer = make_training_optimizer(reference_config, names(), reference.parameters,
                                                world_, reference.nm.get());
  sharded.optimizer = make_training_optimizer(sharded_config, names(), sharded.parameters, world_,
                                              sharded.nm.get());
  for (int step = 1; step <= 3; ++step) {
    train_step(reference, world_.rank(), step);
    train_step(sharded, world_.rank(), step);
    if (nm) {
      for (const std::string name : {"block0.mlp.up_proj.weight", "block1.mlp.down_proj.weight"}) {
        EXPECT_TRUE(reference.nm->keep_mask(name).equal(sharded.nm->keep_mask(name)))
            << name << " at step " << step;
      }
    }
  }
  for (int step = 0; step < 3; ++step) {
    EXPECT_NEAR(sharded.norms[step], reference.norms[step], 1e-6 * reference.norms[step]);
  }
  LayerGather* gather = sharded.optimizer->layer_gather();
  for (int layer = 0; layer < 2; ++layer) {
    if (gather) gather->acquire(layer);
  }
  for (size_t i = 0; i < kParameters.size(); ++i) {
    const auto& got = sharded.parameters[i];
    ASSERT_EQ(got.sizes(), reference.parameters[i].sizes()) << kParameters[i].first;
    EXPECT_TRUE(at::allclose(got, reference.parameters[i], 1e-6, 1e-7)) << kParameters[i].first;
    EXPECT_FALSE(at::isnan(got).any().item<bool>());
  }
}

TEST_P(ShardedOptimizerTest, HoldsItsShareOfTheState) {
  const auto [stage, offload, nm] = GetParam();
  const auto config = experiment(stage, offload, nm);
  auto parameters = initial_parameters();
  std::unique_ptr<NMSparsity> nm_sparsity;
  if (nm) nm_sparsity = std::make_unique<NMSparsity>(config.nm_sparsity);
  ShardedOptimizer optimizer(config, names(), parameters, world_, nm_sparsity.get());
  const FlatLayout& layout = optimizer.layout();
  // From the shapes: stage 3 has already released the layers' weights (numel 0).
  int64_t total = 0;
  for (const auto& [name, shape] : kParameters) total += c10::multiply_integers(shape);
  const int world = world_.size();
  // Each rank's slice is its 1/world of the model plus at most one alignment unit per parameter.
  const int64_t alignment = 32;
  EXPECT_GE(layout.shard_numel() * world, total);
  EXPECT_LE(layout.shard_numel(),
            total / world + alignment * static_cast<int64_t>(kParameters.size() + 3));
  const ModelStateBytes bytes = optimizer.memory();
  const int64_t state = 12 * layout.shard_numel(), gradients = 4 * layout.shard_numel();
  // On a CPU-only machine offloaded state still lives on the model's device (the CPU).
  EXPECT_EQ(bytes.optimizer, state);
  EXPECT_EQ(bytes.host_optimizer, 0);
  EXPECT_EQ(bytes.gradients, gradients);
  int64_t whole_weights = total * 4;
  if (stage == 3) {
    // Stage 3 frees the layers' weights between uses and keeps their slices.
    int64_t layer_numel = 0, layer_shards = 0;
    for (const auto& [name, shape] : kParameters) {
      if (name.rfind("block", 0) == 0) layer_numel += c10::multiply_integers(shape);
    }
    for (const auto& bucket : layout.buckets()) {
      if (bucket.name.rfind("block", 0) == 0) layer_shards += bucket.shard_numel;
    }
    whole_weights = (total - layer_numel + layer_shards) * 4;
  }
  EXPECT_EQ(bytes.weights, whole_weights);
  // Every element of every parameter belongs to exactly one rank's slices.
  std::vector<at::Tensor> owners;
  for (const auto& [name, shape] : kParameters) {
    owners.push_back(at::zeros({c10::multiply_integers(shape)}, at::kInt));
  }
  for (const StateSlice& slice : optimizer.slices_to_save(world_.rank(), world)) {
    owners[slice.parameter].narrow(0, slice.begin, slice.weight.numel()).add_(1);
  }
  for (auto& owner : owners) {
    world_.all_reduce(owner);
    EXPECT_TRUE(owner.eq(1).all().item<bool>());
  }
}

INSTANTIATE_TEST_SUITE_P(
    Stages, ShardedOptimizerTest,
    ::testing::Values(std::make_tuple(1, false, false), std::make_tuple(2, false, false),
                      std::make_tuple(3, false, false), std::make_tuple(1, true, true),
                      std::make_tuple(2, false, true), std::make_tuple(3, true, true)));

}  // namespace
}  // namespace sparsering::trainer

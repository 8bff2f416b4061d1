// parallel.zero_stage 1-3: the fp32 masters and AdamW moments (and from stage 2 the gradients)
// sharded over every rank of the dp x cp mesh, optionally in host memory (optimizer.offload).
//
// The parameters are grouped into flat, padded buckets (FlatLayout: one per decoder layer, one
// for the embedding, final norm and head). After the backward each bucket's gradients are summed
// over the mesh (stage 1: all-reduce, then each rank keeps its slice; stage 2+: reduce-scatter
// straight into the owners' slices; with activation checkpointing each layer as soon as its
// backward ends) and the full-size gradients are freed. Each rank clips and
// steps AdamW on its slice (flat_adamw_step: torch's AdamW arithmetic) and the updated weights
// are all-gathered back into the model's parameters (stage 3: kept as this rank's slice until
// the layer runs; see LayerGather). N:M masks come from each rank's slice of the masters and are
// all-gathered, so they equal stage 0's.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "trainer/model/model.h"
#include "trainer/state/flat_layout.h"
#include "trainer/state/host_adamw.h"
#include "trainer/state/training_optimizer.h"

namespace sparsering::trainer {

class ShardedOptimizer : public TrainingOptimizer, public LayerGather {
 public:
  ShardedOptimizer(const config::Experiment& experiment, const std::vector<std::string>& names,
                   const std::vector<at::Tensor>& parameters, parallel::Communicator& mesh,
                   NMSparsity* nm_sparsity);

  void zero_grad() override;
  void update_nm_masks(int64_t step) override;
  void synchronize_gradients() override;
  void add_sr_ste_term() override;
  double gradient_norm() override;
  void step(double lr, double max_norm, double norm) override;
  ModelStateBytes memory() const override;

  std::vector<StateSlice> slices_to_save(int rank, int world) override;
  std::vector<StateSlice> slices_to_load(bool with_moments) override;
  int64_t adam_step() const override { return adam_step_; }
  void finish_load(int64_t adam_step) override;

  // Stage 2 and 3 with activation checkpointing: each layer's gradients are reduce-scattered as
  // its recomputed backward ends, so only one layer's full gradients exist at a time.
  LayerGather* layer_gather() override { return layerwise_ ? this : nullptr; }
  void acquire(int layer) override;
  void release(int layer) override;
  void backward_done(int layer) override;

  const FlatLayout& layout() const { return layout_; }

 private:
  // This rank's slice of one bucket.
  struct Shard {
    const FlatBucket* bucket = nullptr;
    std::vector<SlotPiece> pieces;
    at::Tensor master, exp_avg, exp_avg_sq;  // fp32 [shard_numel] on the state's device
    // The reduced gradient slice [shard_numel]: fp32 on the state's device; offloaded, in the
    // model's dtype on the model's device.
    at::Tensor grad;
    at::Tensor keep;  // N:M: uint8 [shard_numel], 1 outside the sparse weights
    // Stage 3, decoder layers: the weights stay sharded between uses; `weights` is this rank's
    // slice in the model's dtype on the model's device, what acquire() gathers.
    bool gathered_on_use = false;
    at::Tensor weights;
    // Stage 2 and 3 with activation checkpointing, decoder layers: reduced by backward_done.
    bool reduced_in_backward = false;
  };

  // Reduces one bucket's gradients into its shard's fp32 gradient and frees them.
  void reduce_bucket(Shard& shard);
  // SR-STE's term for elements [begin, begin + length) of `shard`, added to `grad` (fp32, that
  // range).
  void add_sr_ste_range(const Shard& shard, int64_t begin, int64_t length, at::Tensor& grad) const;
  // Offloaded: that range's gradient widened to fp32 on the host, with SR-STE's term.
  at::Tensor host_gradient(const Shard& shard, int64_t begin, int64_t length) const;
  // Writes the shards' masters (in the model's dtype) into the model's parameters (stage 3
  // layers: into their `weights` slices).
  void publish_weights();
  // Copies a slice of updated model-dtype weights (on the model's device) into the parameters,
  // gathered from every rank's slice.
  void publish_slice(const Shard& shard, const at::Tensor& local);
  Shard& layer_shard(int layer);
  // Stage 3: starts gathering layer `layer`'s weights on the communication stream.
  void start_prefetch(int layer);
  // Stage 3: replaces the bucket's parameters' data with empty tensors (their slices stay in
  // Shard::weights).
  void release_slots(const FlatBucket& bucket);
  at::IntArrayRef shape_of(size_t parameter) const { return shapes_[parameter]; }
  bool is_sparse(size_t parameter) const { return !sparse_names_[parameter].empty(); }

  config::Experiment experiment_;
  std::vector<at::Tensor> parameters_;
  parallel::Communicator& mesh_;
  NMSparsity* nm_sparsity_;
  std::vector<std::vector<int64_t>> shapes_;  // the parameters' shapes (stage 3 frees their data)
  std::vector<std::string> sparse_names_;     // per parameter: its name when N:M covers it, else ""
  FlatLayout layout_;
  std::vector<Shard> shards_;
  int stage_;
  bool layerwise_;
  bool offload_;
  at::Device state_device_;
  int64_t adam_step_ = 0;
  // Stage 3: gathers in flight, by layer: the layer that runs next is fetched while this one
  // computes (layer + 1 in the forward, layer - 1 in the backward's recomputation).
  struct Prefetch {
    at::Tensor full;
    std::unique_ptr<parallel::PendingTransfers> pending;
  };
  std::map<int, Prefetch> prefetched_;
  // Elements of an offloaded gradient on the host at once (64 MiB widened to fp32).
  static constexpr int64_t kHostChunk = 1 << 24;
  HostStepPipeline host_pipeline_{kHostChunk};
};

}  // namespace sparsering::trainer

#include "trainer/state/sharded_optimizer.h"

#include <cmath>
#include <map>
#include <numeric>

#include "trainer/nm/nm_mask.h"
#include "trainer/nm/nm_sparsity.h"
#include "trainer/state/flat_adamw.h"
#include "trainer/state/host_adamw.h"

namespace sparsering::trainer {
namespace {

// Parameters start, and slices end, on multiples of this many elements: 128 bytes of fp32 for
// aligned copies, and a multiple of every N:M group size validation allows for the sparse layers.
int64_t alignment_for(const config::Experiment& e) {
  const int64_t base = 32;
  const int64_t m = e.nm_sparsity.enabled ? e.nm_sparsity.m : 1;
  return std::lcm(base, m);
}

std::vector<int64_t> numels_of(const std::vector<at::Tensor>& parameters) {
  std::vector<int64_t> numels;
  for (const auto& p : parameters) numels.push_back(p.numel());
  return numels;
}

}  // namespace

ShardedOptimizer::ShardedOptimizer(const config::Experiment& experiment,
                                   const std::vector<std::string>& names,
                                   const std::vector<at::Tensor>& parameters,
                                   parallel::Communicator& mesh, NMSparsity* nm_sparsity)
    : experiment_(experiment),
      parameters_(parameters),
      mesh_(mesh),
      nm_sparsity_(nm_sparsity),
      sparse_names_(parameters.size()),
      layout_(names, numels_of(parameters), mesh.size(), alignment_for(experiment)),
      stage_(experiment.parallel.zero_stage),
      layerwise_(stage_ >= 2 && experiment.model.activation_checkpointing),
      offload_(experiment.optimizer.offload_to_cpu),
      state_device_(experiment.optimizer.offload_to_cpu ? at::Device(at::kCPU)
                                                        : parameters.front().device()) {
  for (size_t i = 0; i < names.size(); ++i) {
    if (nm_sparsity_ && nm_sparsity_->covers(names[i])) sparse_names_[i] = names[i];
    shapes_.push_back(parameters[i].sizes().vec());
  }
  // Offloaded state stays in ordinary (pageable) host memory: every transfer between it and the
  // GPU goes through HostStepPipeline's own page-locked chunk buffers, so locking 13 bytes per
  // parameter (96 GB for an 8B model) would buy nothing and could fail on a smaller host.
  const auto fp32 = at::TensorOptions().dtype(at::kFloat).device(state_device_);
  at::NoGradGuard no_grad;
  for (const FlatBucket& bucket : layout_.buckets()) {
    Shard shard;
    shard.bucket = &bucket;
    shard.pieces = layout_.pieces(bucket, mesh_.rank());
    shard.master = at::zeros({bucket.shard_numel}, fp32);
    shard.exp_avg = at::zeros({bucket.shard_numel}, fp32);
    shard.exp_avg_sq = at::zeros({bucket.shard_numel}, fp32);
    // Offloaded, the reduced gradient slice waits on the GPU in the model's dtype (2 bytes per
    // element instead of 4 on the host) and is widened chunk by chunk in step().
    shard.grad = offload_ ? at::zeros({bucket.shard_numel}, parameters.front().options())
                          : at::zeros({bucket.shard_numel}, fp32);
    // Every rank builds the same initial weights (same seed), so each copies its own slice.
    for (const SlotPiece& piece : shard.pieces) {
      shard.master.narrow(0, piece.shard_offset, piece.length)
          .copy_(parameters_[piece.slot->parameter].detach().reshape(-1).narrow(0, piece.begin,
                                                                                piece.length));
    }
    if (nm_sparsity_) {
      shard.keep = at::ones({bucket.shard_numel}, fp32.dtype(at::kByte));
    }
    const bool layer = bucket.name.rfind("block", 0) == 0;
    shard.gathered_on_use = stage_ == 3 && layer;
    shard.reduced_in_backward = stage_ >= 2 && experiment.model.activation_checkpointing && layer;
    shards_.push_back(std::move(shard));
  }
  for (Shard& shard : shards_) {
    if (!shard.gathered_on_use) continue;
    const auto& first = parameters_[shard.bucket->slots.front().parameter];
    shard.weights = shard.master.to(first.options());
    release_slots(*shard.bucket);
  }
}

void ShardedOptimizer::release_slots(const FlatBucket& bucket) {
  for (const FlatSlot& slot : bucket.slots) {
    auto& p = parameters_[slot.parameter];
    p.set_data(at::empty({0}, p.options()));
  }
}

ShardedOptimizer::Shard& ShardedOptimizer::layer_shard(int layer) {
  const std::string name = "block" + std::to_string(layer);
  for (Shard& shard : shards_) {
    if (shard.bucket->name == name && shard.reduced_in_backward) return shard;
  }
  throw std::logic_error("ShardedOptimizer: layer " + name + " is not reduced in the backward");
}

void ShardedOptimizer::start_prefetch(int layer) {
  Shard& shard = layer_shard(layer);
  Prefetch prefetch;
  prefetch.full = at::empty({shard.bucket->padded_numel}, shard.weights.options());
  prefetch.pending = mesh_.start_all_gather(shard.weights, prefetch.full);
  prefetched_[layer] = std::move(prefetch);
}

void ShardedOptimizer::acquire(int layer) {
  // The forward runs without gradients (activation checkpointing) and goes up the layers; the
  // backward recomputes with gradients on and goes down.
  const bool recomputing = at::GradMode::is_enabled();
  at::NoGradGuard no_grad;
  Shard& shard = layer_shard(layer);
  if (!shard.gathered_on_use) return;
  at::Tensor full;
  if (mesh_.size() == 1) {
    full = shard.weights;
  } else if (auto found = prefetched_.find(layer); found != prefetched_.end()) {
    found->second.pending->wait();
    full = found->second.full;
    prefetched_.erase(found);
  } else {
    full = mesh_.all_gather(shard.weights).reshape(-1);
  }
  for (const FlatSlot& slot : shard.bucket->slots) {
    auto& p = parameters_[slot.parameter];
    p.set_data(full.narrow(0, slot.offset, slot.numel).view(shape_of(slot.parameter)));
  }
  if (mesh_.size() == 1) return;
  const int next = recomputing ? layer - 1 : layer + 1;
  if (next >= 0 && next < experiment_.model.num_layers && !prefetched_.count(next)) {
    start_prefetch(next);
  }
}

void ShardedOptimizer::release(int layer) {
  Shard& shard = layer_shard(layer);
  if (shard.gathered_on_use) release_slots(*shard.bucket);
}

void ShardedOptimizer::backward_done(int layer) {
  at::NoGradGuard no_grad;
  Shard& shard = layer_shard(layer);
  reduce_bucket(shard);
  if (shard.gathered_on_use) release_slots(*shard.bucket);
}

void ShardedOptimizer::zero_grad() {
  for (auto& p : parameters_) p.mutable_grad() = at::Tensor();
  // Gradients are summed into the slices: stage 3 layers once per micro-batch.
  for (Shard& shard : shards_) shard.grad.zero_();
}

void ShardedOptimizer::update_nm_masks(int64_t step) {
  if (!nm_sparsity_) return;
  const int64_t n = nm_sparsity_->config().n, m = nm_sparsity_->config().m;
  const auto device = parameters_.front().device();
  std::map<std::string, at::Tensor> masks;
  at::NoGradGuard no_grad;
  for (Shard& shard : shards_) {
    bool any_sparse = false;
    for (const SlotPiece& piece : shard.pieces) {
      if (!is_sparse(piece.slot->parameter)) continue;
      // Pieces start and end on group boundaries (FlatLayout alignment), so a piece is whole
      // groups of m input weights: the [rows, m] view has the groups nm_keep_mask cuts.
      const auto weights = shard.master.narrow(0, piece.shard_offset, piece.length).view({-1, m});
      shard.keep.narrow(0, piece.shard_offset, piece.length)
          .copy_(nm_keep_mask(weights, n, m).reshape(-1));
    }
    for (const FlatSlot& slot : shard.bucket->slots) any_sparse |= is_sparse(slot.parameter);
    if (!any_sparse) continue;
    const auto gathered = mesh_.all_gather(shard.keep.to(device)).reshape(-1);
    for (const FlatSlot& slot : shard.bucket->slots) {
      if (!is_sparse(slot.parameter)) continue;
      masks[sparse_names_[slot.parameter]] =
          gathered.narrow(0, slot.offset, slot.numel).view(shape_of(slot.parameter)).to(at::kBool);
    }
  }
  nm_sparsity_->set_masks(std::move(masks), step);
}

void ShardedOptimizer::reduce_bucket(Shard& shard) {
  const FlatBucket& bucket = *shard.bucket;
  const auto& first = parameters_[bucket.slots.front().parameter];
  // NCCL sums in the model's dtype, as stage 0's all-reduce does; MPI sums fp32.
  const auto dtype = first.is_cuda() ? first.scalar_type() : at::kFloat;
  auto flat = at::zeros({bucket.padded_numel}, first.options().dtype(dtype));
  for (const FlatSlot& slot : bucket.slots) {
    auto& grad = parameters_[slot.parameter].mutable_grad();
    if (grad.defined()) flat.narrow(0, slot.offset, slot.numel).copy_(grad.reshape(-1));
    grad = at::Tensor();  // the full-size gradient is not needed any more
  }
  at::Tensor mine;
  if (mesh_.size() == 1) {
    mine = flat;
  } else if (stage_ == 1) {
    mesh_.all_reduce(flat);
    mine = flat.narrow(0, mesh_.rank() * bucket.shard_numel, bucket.shard_numel);
  } else {
    mine = mesh_.reduce_scatter(flat);
  }
  // A bf16 model on CPU ranks sums in fp32 (MPI has no bf16 sum) and rounds the sum to bf16, as
  // NCCL's bf16 sum and stage 0's CPU all-reduce do.
  if (!first.is_cuda() && first.scalar_type() != at::kFloat) mine = mine.to(first.scalar_type());
  shard.grad.add_(mine);
}

void ShardedOptimizer::synchronize_gradients() {
  at::NoGradGuard no_grad;
  // Stage 2 and 3 layers were reduced as their backward ended (backward_done).
  for (Shard& shard : shards_) {
    if (!shard.reduced_in_backward) reduce_bucket(shard);
  }
}

void ShardedOptimizer::add_sr_ste_range(const Shard& shard, int64_t begin, int64_t length,
                                        at::Tensor& grad) const {
  if (!nm_sparsity_ || nm_sparsity_->config().mode != config::NMMode::kSrSte) return;
  const double lambda = nm_sparsity_->config().sr_ste_lambda;
  for (const SlotPiece& piece : shard.pieces) {
    if (!is_sparse(piece.slot->parameter)) continue;
    const int64_t first = std::max(begin, piece.shard_offset);
    const int64_t last = std::min(begin + length, piece.shard_offset + piece.length);
    if (first >= last) continue;
    const auto keep = shard.keep.narrow(0, first, last - first).to(at::kBool);
    const auto pruned = shard.master.narrow(0, first, last - first).masked_fill(keep, 0);
    grad.narrow(0, first - begin, last - first).add_(pruned, lambda);
  }
}

at::Tensor ShardedOptimizer::host_gradient(const Shard& shard, int64_t begin,
                                           int64_t length) const {
  // Always a copy: on a CPU-only rank with an fp32 model, to() would return a view of the slice,
  // and the SR-STE term and clipping below must not accumulate into the stored gradient.
  auto grad = shard.grad.narrow(0, begin, length)
                  .to(at::TensorOptions().device(at::kCPU).dtype(at::kFloat),
                      /*non_blocking=*/false, /*copy=*/true);
  add_sr_ste_range(shard, begin, length, grad);
  return grad;
}

void ShardedOptimizer::add_sr_ste_term() {
  // Offloaded, the term is added to each chunk as it is widened on the host (host_gradient).
  if (offload_) return;
  at::NoGradGuard no_grad;
  for (Shard& shard : shards_) add_sr_ste_range(shard, 0, shard.bucket->shard_numel, shard.grad);
}

double ShardedOptimizer::gradient_norm() {
  at::NoGradGuard no_grad;
  const bool sr_ste = nm_sparsity_ && nm_sparsity_->config().mode == config::NMMode::kSrSte;
  std::vector<at::Tensor> norms;
  for (const Shard& shard : shards_) {
    for (int64_t begin = 0; begin < shard.bucket->shard_numel; begin += kHostChunk) {
      const int64_t length = std::min(kHostChunk, shard.bucket->shard_numel - begin);
      // fp32 norms of bounded chunks: a bf16 slice is never widened whole.
      const auto chunk = offload_ && sr_ste ? host_gradient(shard, begin, length)
                                            : shard.grad.narrow(0, begin, length).to(at::kFloat);
      norms.push_back(chunk.norm().to(at::kDouble).cpu());
    }
  }
  // One host synchronisation; the squares are summed over the mesh in fp64 on the host (MPI).
  auto squares = at::stack(norms).pow(2).sum().reshape({1});
  if (mesh_.size() > 1) mesh_.all_reduce(squares);
  return std::sqrt(squares.item<double>());
}

void ShardedOptimizer::step(double lr, double max_norm, double norm) {
  at::NoGradGuard no_grad;
  ++adam_step_;
  const bool clip = max_norm > 0 && norm > max_norm;
  const double scale = max_norm / (norm + 1e-6);
  for (Shard& shard : shards_) {
    if (!offload_) {
      if (clip) shard.grad.mul_(scale);
      flat_adamw_step(shard.master, shard.grad, shard.exp_avg, shard.exp_avg_sq, lr,
                      experiment_.optimizer, adam_step_);
      continue;
    }
    // Offloaded: one fused AdamW pass on the host per chunk, the gradient widened on the fly,
    // transfers of the neighbouring chunks in flight (HostStepPipeline).
    HostAdamWStep host_step;
    host_step.lr = lr;
    host_step.step = adam_step_;
    host_step.grad_scale = clip ? scale : 1.0;
    host_step.optimizer = experiment_.optimizer;
    const bool sr_ste = nm_sparsity_ && nm_sparsity_->config().mode == config::NMMode::kSrSte;
    if (sr_ste) host_step.sr_ste_lambda = nm_sparsity_->config().sr_ste_lambda;
    const auto& first = parameters_[shard.bucket->slots.front().parameter];
    at::Tensor local = shard.gathered_on_use
                           ? shard.weights
                           : at::empty({shard.bucket->shard_numel}, first.options());
    host_pipeline_.run(shard.grad, shard.master, shard.exp_avg, shard.exp_avg_sq,
                       sr_ste ? shard.keep : at::Tensor(), local, host_step);
    if (!shard.gathered_on_use) publish_slice(shard, local);
  }
  if (!offload_) publish_weights();
}

void ShardedOptimizer::publish_weights() {
  at::NoGradGuard no_grad;
  for (Shard& shard : shards_) {
    if (shard.gathered_on_use) {
      shard.weights.copy_(shard.master);
      continue;
    }
    const auto& first = parameters_[shard.bucket->slots.front().parameter];
    publish_slice(shard, shard.master.to(first.options()));
  }
}

void ShardedOptimizer::publish_slice(const Shard& shard, const at::Tensor& local) {
  at::NoGradGuard no_grad;
  const FlatBucket& bucket = *shard.bucket;
  const auto full = mesh_.size() == 1 ? local : mesh_.all_gather(local).reshape(-1);
  for (const FlatSlot& slot : bucket.slots) {
    auto& p = parameters_[slot.parameter];
    p.detach().view(-1).copy_(full.narrow(0, slot.offset, slot.numel));
  }
}

ModelStateBytes ShardedOptimizer::memory() const {
  ModelStateBytes bytes;
  for (const auto& p : parameters_) {
    bytes.weights += p.nbytes();
    if (p.grad().defined()) bytes.gradients += p.grad().nbytes();
  }
  int64_t state = 0;
  for (const Shard& shard : shards_) {
    if (shard.weights.defined()) bytes.weights += shard.weights.nbytes();
    state += shard.master.nbytes() + shard.exp_avg.nbytes() + shard.exp_avg_sq.nbytes();
    bytes.gradients += shard.grad.nbytes();  // on the model's device, offloaded or not
  }
  if (offload_ && !parameters_.front().is_cpu()) {
    bytes.host_optimizer = state;
  } else {
    bytes.optimizer = state;
  }
  return bytes;
}

std::vector<StateSlice> ShardedOptimizer::slices_to_save(int rank, int world) {
  return slices_to_load(/*with_moments=*/true);
}

std::vector<StateSlice> ShardedOptimizer::slices_to_load(bool with_moments) {
  std::vector<StateSlice> slices;
  for (Shard& shard : shards_) {
    for (const SlotPiece& piece : shard.pieces) {
      slices.push_back({piece.slot->parameter, piece.begin,
                        shard.master.narrow(0, piece.shard_offset, piece.length),
                        shard.exp_avg.narrow(0, piece.shard_offset, piece.length),
                        shard.exp_avg_sq.narrow(0, piece.shard_offset, piece.length)});
    }
  }
  return slices;
}

void ShardedOptimizer::finish_load(int64_t adam_step) {
  adam_step_ = adam_step;
  publish_weights();
}

}  // namespace sparsering::trainer

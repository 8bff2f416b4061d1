// Sparse ring attention over the context-parallel group (docs/algorithms.md, 3; its place in a
// training step: docs/architecture.md, "One training step", 6 and 8).
//
// Every rank holds the query, key and value tokens of its layout blocks. Forward: the key/value
// shards travel around the ring (sent to rank+1, received from rank-1) while each rank attends
// its queries to the shard already here, merging partial outputs by log-sum-exp; compute is
// skipped for a shard with no active block, never its transfer. Backward: the ring runs again,
// dQ accumulates locally, and each shard's dK/dV accumulator travels one step behind its K/V and
// returns to its owner after the last step. The hierarchical ring nests an intra-node ring in an
// inter-node one so the slow transfer of the next node's shard overlaps a whole inner ring.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <memory>

#include "kernels/vertical_slash.h"
#include "parallel/communicator.h"
#include "parallel/layout.h"
#include "parallel/phase_observer.h"

namespace sparsering::parallel {

struct RingAttentionConfig {
  bool sparse = false;  // vertical-slash pattern; false = every causal block
  // Pattern budgets per head (kernels/vertical_slash.h).
  int64_t num_columns = 0;
  int64_t num_diagonals = 0;
  int64_t sink_tokens = 64;
  int64_t local_tokens = 128;
  int estimation_queries = 64;  // last queries of the sequence sampled to estimate the pattern
  bool deterministic_backward = false;
  // On GPUs, ring steps of the dense pattern whose mask is plain (a shard against itself, or
  // keys wholly before the queries) run through cuDNN (kernels/cudnn_attention.h).
  bool cudnn_dense = false;
};

// Work of the last forward call on this rank, for density and imbalance figures.
struct RingAttentionStats {
  int64_t attended_pairs = 0;  // (query, key) pairs computed, blocks counted whole
  int64_t dense_pairs = 0;     // the same for every causal block (the dense ring's work)
  int64_t skipped_shards = 0;  // ring steps whose compute was skipped
  double density() const {
    return dense_pairs == 0 ? 0.0 : static_cast<double>(attended_pairs) / dense_pairs;
  }
};

// The ring's groups and its two levels. A flat ring has inner = cp and no outer ring. Ranks are
// numbered node-major: ring rank = outer rank x inner size + inner rank. With head parallelism
// (parallel.head_parallel_size u > 1) the context-parallel group of size cp is u x (cp / u):
// `heads` holds u consecutive cp ranks, and `cp` is the ring over the cp / u head groups (the
// ranks with the same position in theirs), so the ring's rank r is cp rank r x u + heads rank.
struct RingGroups {
  Communicator* cp = nullptr;
  Communicator* inner = nullptr;
  Communicator* outer = nullptr;  // nullptr for the flat ring
  Communicator* heads = nullptr;  // nullptr (or size 1) without head parallelism
};

class RingAttention {
 public:
  RingAttention(RingAttentionConfig config, RingGroups groups, TokenLayout layout);

  // q [batch, local_tokens, heads, dim] (after RoPE at global positions), k and v
  // [batch, local_tokens, kv_heads, dim]. Differentiable in q, k and v. `estimate` re-estimates
  // the sparse pattern from these q and k (the last pattern is reused otherwise); `dense` runs
  // every causal block whatever the config says (dense warm-up). `q_key_starts` (document
  // masking) is int32 [batch, local_tokens] on q's device, in this rank's layout order like its
  // positions: the global position of the first token of each query's document; the query then
  // attends only keys from there up to itself, on every kv shard, in forward and backward.
  // Undefined = plain causal attention. The pattern estimate ignores documents. With head
  // parallelism q, k and v first go through the head all-to-all (parallel/head_all_to_all.h; K/V
  // heads repeated to the query heads when u does not divide them) and the output comes back.
  at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool estimate,
                     bool dense, const at::Tensor& q_key_starts = {});

  // The pattern estimated from q and k (after the head all-to-all), identical on every rank of
  // the ring.
  kernels::VerticalSlashPattern estimate_pattern(const at::Tensor& q, const at::Tensor& k);

  const RingAttentionStats& stats() const { return stats_; }
  // The last estimated pattern (for this rank's heads after the head all-to-all).
  const kernels::VerticalSlashPattern& pattern() const { return pattern_; }
  // Waits for ring transfers are reported to `observer` as kRingCommunicationPhase.
  void set_phase_observer(PhaseObserver* observer) { observer_ = observer; }
  // The ring's layout: the context-parallel layout, merged over each head group.
  const TokenLayout& layout() const { return layout_; }

 private:
  bool head_parallel() const { return groups_.heads != nullptr && groups_.heads->size() > 1; }
  // Attention over the ring of q, k and v as this rank holds them for the ring.
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool estimate,
                    bool dense, const at::Tensor& q_key_starts);

  RingAttentionConfig config_;
  RingGroups groups_;
  TokenLayout layout_;
  kernels::VerticalSlashPattern pattern_;
  bool has_pattern_ = false;
  RingAttentionStats stats_;
  PhaseObserver* observer_ = nullptr;
};

}  // namespace sparsering::parallel

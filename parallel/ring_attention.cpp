#include "parallel/ring_attention.h"

#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "kernels/cudnn_attention.h"
#include "kernels/sparse_attention.h"
#include "parallel/head_all_to_all.h"
#include "parallel/plain_steps.h"

namespace sparsering::parallel {
namespace {

using kernels::ShardBlocks;
using kernels::SparseIndex;

// What forward and backward share: block ids and sparse index of every source shard.
struct RingPlan : torch::CustomClassHolder {
  RingGroups groups;
  std::vector<ShardBlocks> blocks;   // by source cp rank
  std::vector<SparseIndex> indices;  // by source cp rank
  // By source cp rank: set where the step's mask splits into plain parts that run through cuDNN
  // (its index is then left empty).
  std::vector<std::optional<std::vector<PlainPart>>> plain_parts;
  double softmax_scale = 1.0;
  bool deterministic = false;
  int64_t skipped_shards = 0;
  PhaseObserver* observer = nullptr;

  // Waits for transfers: the time they are not hidden behind compute.
  void wait(PendingTransfers& pending) const {
    ObservedPhase phase(observer, kRingCommunicationPhase);
    pending.wait();
  }

  int inner_size() const { return groups.inner->size(); }
  int outer_size() const { return groups.outer ? groups.outer->size() : 1; }
  int outer_rank() const { return groups.outer ? groups.outer->rank() : 0; }
  // The cp rank whose shard is here at (outer step, inner step).
  int shard_at(int outer_step, int inner_step) const {
    const int node = (outer_rank() - outer_step + outer_size()) % outer_size();
    const int local = (groups.inner->rank() - inner_step + inner_size()) % inner_size();
    return node * inner_size() + local;
  }
};

struct KeyValue {
  at::Tensor k, v;
};

int ring_next(const Communicator& c, int hops = 1) { return (c.rank() + hops) % c.size(); }
int ring_prev(const Communicator& c, int hops = 1) {
  return ((c.rank() - hops) % c.size() + c.size()) % c.size();
}

KeyValue empty_like(const KeyValue& kv) { return {at::empty_like(kv.k), at::empty_like(kv.v)}; }

at::Tensor query_rows(const at::Tensor& t, const PlainPart& part) {
  return t.slice(1, part.q_begin, part.q_end);
}
at::Tensor key_rows(const at::Tensor& t, const PlainPart& part) {
  return t.slice(1, part.k_begin, part.k_end);
}

// cuDNN on each plain part of a step, merged into the part's rows of out/lse.
void plain_step_forward(const RingPlan& plan, const std::vector<PlainPart>& parts,
                        const at::Tensor& q, const KeyValue& kv, at::Tensor& out, at::Tensor& lse) {
  for (const PlainPart& part : parts) {
    auto result = kernels::cudnn_attention_forward(
        query_rows(q, part).contiguous(), key_rows(kv.k, part).contiguous(),
        key_rows(kv.v, part).contiguous(), part.mask, plan.softmax_scale);
    auto rows_out = query_rows(out, part).contiguous();
    auto rows_lse = lse.slice(2, part.q_begin, part.q_end).contiguous();
    kernels::lse_merge(rows_out, rows_lse, result.out, result.lse);
    // Rows that are not contiguous in the accumulators were merged in a copy: write them back.
    if (!rows_out.is_alias_of(out)) query_rows(out, part).copy_(rows_out);
    if (!rows_lse.is_alias_of(lse)) lse.slice(2, part.q_begin, part.q_end).copy_(rows_lse);
  }
}

// Adds each plain part's gradients into its rows of the fp32 accumulators.
void plain_step_backward(const RingPlan& plan, const std::vector<PlainPart>& parts,
                         const at::Tensor& dout, const at::Tensor& q, const KeyValue& kv,
                         const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq,
                         at::Tensor& dk, at::Tensor& dv) {
  for (const PlainPart& part : parts) {
    auto dq_rows = query_rows(dq, part), dk_rows = key_rows(dk, part), dv_rows = key_rows(dv, part);
    kernels::cudnn_attention_backward(
        query_rows(dout, part).contiguous(), query_rows(q, part).contiguous(),
        key_rows(kv.k, part).contiguous(), key_rows(kv.v, part).contiguous(),
        query_rows(out, part).contiguous(), lse.slice(2, part.q_begin, part.q_end), part.mask,
        plan.softmax_scale, dq_rows, dk_rows, dv_rows);
  }
}

// One inner ring starting from `kv` (the shard here at inner step 0), merged into out/lse.
void inner_ring_forward(RingPlan& plan, int outer_step, const at::Tensor& q, KeyValue kv,
                        at::Tensor& out, at::Tensor& lse) {
  Communicator& ring = *plan.groups.inner;
  const int steps = ring.size();
  for (int i = 0; i < steps; ++i) {
    std::unique_ptr<PendingTransfers> pending;
    KeyValue incoming;
    if (i + 1 < steps) {
      incoming = empty_like(kv);
      pending =
          ring.start_transfers({{kv.k, ring_next(ring)}, {kv.v, ring_next(ring)}},
                               {{incoming.k, ring_prev(ring)}, {incoming.v, ring_prev(ring)}});
    }
    const int source = plan.shard_at(outer_step, i);
    const SparseIndex& index = plan.indices[source];
    const auto& plain = plan.plain_parts[source];
    if (plain && !plain->empty()) {
      plain_step_forward(plan, *plain, q, kv, out, lse);
    } else if (plain || index.empty()) {
      ++plan.skipped_shards;
    } else {
      auto part = kernels::sparse_attention_forward(q, kv.k, kv.v, plan.blocks[source], index,
                                                    plan.softmax_scale);
      kernels::lse_merge(out, lse, part.out, part.lse);
    }
    if (pending) {
      plan.wait(*pending);
      kv = incoming;
    }
  }
}

std::pair<at::Tensor, at::Tensor> ring_forward(RingPlan& plan, const at::Tensor& q,
                                               const at::Tensor& k, const at::Tensor& v) {
  auto out = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
  auto lse = at::full({q.size(0), q.size(2), q.size(1)}, -INFINITY, out.options());
  KeyValue outer_kv{k.contiguous(), v.contiguous()};
  for (int o = 0; o < plan.outer_size(); ++o) {
    std::unique_ptr<PendingTransfers> pending;
    KeyValue incoming;
    if (o + 1 < plan.outer_size()) {
      // The next node's shard travels over the slow link during the whole inner ring.
      Communicator& outer = *plan.groups.outer;
      incoming = empty_like(outer_kv);
      pending =
          outer.start_transfers({{outer_kv.k, ring_next(outer)}, {outer_kv.v, ring_next(outer)}},
                                {{incoming.k, ring_prev(outer)}, {incoming.v, ring_prev(outer)}});
    }
    inner_ring_forward(plan, o, q, outer_kv, out, lse);
    if (pending) {
      plan.wait(*pending);
      outer_kv = incoming;
    }
  }
  return {out.to(q.scalar_type()), lse};
}

struct Gradients {
  at::Tensor dk, dv;  // fp32
};

// Backward of one inner ring starting from `kv`. dq accumulates here; the dK/dV accumulator of
// each shard travels one step behind its K/V, so its transfer overlaps the next step's compute.
// Returns this node's complete contribution to the gradient of the shard of inner step 0.
Gradients inner_ring_backward(RingPlan& plan, int outer_step, const at::Tensor& dout,
                              const at::Tensor& q, const at::Tensor& out, const at::Tensor& lse,
                              const at::Tensor& delta, at::Tensor& dq, KeyValue kv) {
  Communicator& ring = *plan.groups.inner;
  const int steps = ring.size();
  const int next = ring_next(ring), prev = ring_prev(ring);
  Gradients carried;  // accumulator of the previous step's shard, to pass on
  for (int i = 0; i < steps; ++i) {
    std::vector<Transfer> sends, receives;
    KeyValue incoming;
    Gradients arriving;
    if (i + 1 < steps) {
      incoming = empty_like(kv);
      sends.insert(sends.end(), {{kv.k, next}, {kv.v, next}});
      receives.insert(receives.end(), {{incoming.k, prev}, {incoming.v, prev}});
    }
    if (i > 0) {
      arriving = {at::empty_like(carried.dk), at::empty_like(carried.dv)};
      sends.insert(sends.end(), {{carried.dk, next}, {carried.dv, next}});
      receives.insert(receives.end(), {{arriving.dk, prev}, {arriving.dv, prev}});
    }
    std::unique_ptr<PendingTransfers> pending;
    if (!sends.empty()) pending = ring.start_transfers(sends, receives);

    const int source = plan.shard_at(outer_step, i);
    const SparseIndex& index = plan.indices[source];
    Gradients partial{at::zeros(kv.k.sizes(), kv.k.options().dtype(at::kFloat)),
                      at::zeros(kv.v.sizes(), kv.v.options().dtype(at::kFloat))};
    if (const auto& plain = plan.plain_parts[source]) {
      plain_step_backward(plan, *plain, dout, q, kv, out, lse, dq, partial.dk, partial.dv);
    } else if (!index.empty()) {
      kernels::sparse_attention_backward(dout, q, kv.k, kv.v, out, lse, delta, plan.blocks[source],
                                         index, plan.softmax_scale, plan.deterministic, dq,
                                         partial.dk, partial.dv);
    }
    if (pending) plan.wait(*pending);
    if (i > 0) {
      partial.dk.add_(arriving.dk);
      partial.dv.add_(arriving.dv);
    }
    carried = partial;
    if (i + 1 < steps) kv = incoming;
  }
  if (steps == 1) return carried;
  // The last accumulator belongs to the shard of inner step 0 of the next rank: one more hop.
  Gradients mine{at::empty_like(carried.dk), at::empty_like(carried.dv)};
  plan.wait(*ring.start_transfers({{carried.dk, next}, {carried.dv, next}},
                                  {{mine.dk, prev}, {mine.dv, prev}}));
  return mine;
}

torch::autograd::variable_list ring_backward(RingPlan& plan, const at::Tensor& dout,
                                             const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& v, const at::Tensor& out,
                                             const at::Tensor& lse) {
  const auto delta = kernels::attention_delta(dout, out);
  auto dq = at::zeros(q.sizes(), q.options().dtype(at::kFloat));
  Gradients own;
  KeyValue outer_kv{k.contiguous(), v.contiguous()};
  std::unique_ptr<PendingTransfers> partials_pending;
  Gradients partial_in;
  for (int o = 0; o < plan.outer_size(); ++o) {
    std::unique_ptr<PendingTransfers> kv_pending;
    KeyValue incoming;
    Communicator* outer = plan.groups.outer;
    if (o + 1 < plan.outer_size()) {
      incoming = empty_like(outer_kv);
      kv_pending = outer->start_transfers(
          {{outer_kv.k, ring_next(*outer)}, {outer_kv.v, ring_next(*outer)}},
          {{incoming.k, ring_prev(*outer)}, {incoming.v, ring_prev(*outer)}});
    }
    Gradients node = inner_ring_backward(plan, o, dout, q, out, lse, delta, dq, outer_kv);
    if (o == 0) {
      own = node;
    } else {
      // This node's share of the gradient of node (n - o)'s shard goes straight to its owner,
      // and node (n + o) sends its share of ours; the exchange overlaps the next inner ring.
      if (partials_pending) {
        plan.wait(*partials_pending);
        own.dk.add_(partial_in.dk);
        own.dv.add_(partial_in.dv);
      }
      partial_in = {at::empty_like(node.dk), at::empty_like(node.dv)};
      partials_pending = outer->start_transfers(
          {{node.dk, ring_prev(*outer, o)}, {node.dv, ring_prev(*outer, o)}},
          {{partial_in.dk, ring_next(*outer, o)}, {partial_in.dv, ring_next(*outer, o)}});
    }
    if (kv_pending) {
      plan.wait(*kv_pending);
      outer_kv = incoming;
    }
  }
  if (partials_pending) {
    plan.wait(*partials_pending);
    own.dk.add_(partial_in.dk);
    own.dv.add_(partial_in.dv);
  }
  return {dq.to(q.scalar_type()), own.dk.to(k.scalar_type()), own.dv.to(v.scalar_type())};
}

class RingAttentionFunction : public torch::autograd::Function<RingAttentionFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q,
                            const at::Tensor& k, const at::Tensor& v,
                            const c10::intrusive_ptr<RingPlan>& plan) {
    auto [out, lse] = ring_forward(*plan, q, k, v);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->saved_data["plan"] = c10::IValue::make_capsule(plan);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto plan = c10::static_intrusive_pointer_cast<RingPlan>(ctx->saved_data["plan"].toCapsule());
    auto gradients = ring_backward(*plan, grads[0].contiguous(), saved[0], saved[1], saved[2],
                                   saved[3], saved[4]);
    gradients.push_back(at::Tensor());  // the plan is not differentiable
    return gradients;
  }
};

// Dense causal work of this rank's queries, counting blocks whole: query block g sees g+1 blocks.
int64_t dense_pairs(const at::Tensor& q_block_ids, int64_t heads_x_batch, int block_size) {
  return (q_block_ids.to(at::kLong).sum().item<int64_t>() + q_block_ids.numel()) * heads_x_batch *
         block_size * block_size;
}

}  // namespace

RingAttention::RingAttention(RingAttentionConfig config, RingGroups groups, TokenLayout layout)
    : config_(config),
      groups_(groups),
      layout_(groups.heads != nullptr ? layout.merged(groups.heads->size()) : std::move(layout)) {
  const int outer = groups_.outer ? groups_.outer->size() : 1;
  if (groups_.cp == nullptr || groups_.inner == nullptr ||
      groups_.inner->size() * outer != groups_.cp->size() ||
      layout_.world() != groups_.cp->size()) {
    throw std::invalid_argument(
        "ring attention: inner ring size x outer ring size must equal the context-parallel size "
        "and the layout's world");
  }
  if (config_.estimation_queries > layout_.block_size()) {
    throw std::invalid_argument("ring attention: estimation_queries (" +
                                std::to_string(config_.estimation_queries) +
                                ") must not exceed the block size");
  }
}

kernels::VerticalSlashPattern RingAttention::estimate_pattern(const at::Tensor& q,
                                                              const at::Tensor& k) {
  Communicator& cp = *groups_.cp;
  const int64_t length = layout_.sequence_length(), samples = config_.estimation_queries;
  const int block_size = layout_.block_size();
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  // The last queries of the sequence see every key: broadcast them from the rank that holds them.
  const auto [owner, slot] = layout_.owner_of(layout_.num_blocks() - 1);
  const int64_t end = (slot + 1) * block_size;
  auto sample = cp.rank() == owner
                    ? q.slice(1, end - samples, end).contiguous()
                    : at::empty({q.size(0), samples, q.size(2), q.size(3)}, q.options());
  cp.broadcast(sample, owner);
  const auto sampled = kernels::make_sampled_queries(sample, length - samples, k,
                                                     layout_.positions_of(cp.rank()), scale);
  // Softmax over the whole sequence without materialising it (on GPUs not even the logits, which
  // take 1 GB for 64 queries against a 128K-token shard at 32 heads): every shard's row
  // statistics, combined as in online softmax: the global max, and each local sum taken relative
  // to it before summing.
  const auto local = kernels::sampled_row_stats(sampled);
  auto row_max = local.max.clone();
  cp.all_reduce(row_max, ReduceOp::kMax);
  auto row_sum = kernels::rescale_row_sum(local, row_max).contiguous();
  cp.all_reduce(row_sum, ReduceOp::kSum);
  const auto mass = kernels::sampled_attention_mass(sampled, row_max, row_sum, length);
  auto combined = at::stack({mass.vertical, mass.slash}).contiguous();
  cp.all_reduce(combined, ReduceOp::kSum);
  // Identical inputs on every rank make the selection identical; reduction order may not.
  cp.broadcast(combined, 0);
  return kernels::select_pattern({combined[0], combined[1]}, config_.num_columns,
                                 config_.num_diagonals, config_.sink_tokens, config_.local_tokens,
                                 block_size);
}

at::Tensor RingAttention::forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  bool estimate, bool dense, const at::Tensor& q_key_starts) {
  if (!head_parallel()) return attend(q, k, v, estimate, dense, q_key_starts);
  Communicator& heads = *groups_.heads;
  at::Tensor q_heads, k_heads, v_heads, key_starts;
  {
    ObservedPhase phase(observer_, kHeadAllToAllPhase);
    q_heads = heads_to_tokens(q, heads);
    // K/V split by head when u divides their heads; else each K/V head is first repeated the
    // fewest times that make the count divisible by u, u / gcd(kv_heads, u) (a divisor of
    // heads / kv_heads, as u divides heads), which multiplies their traffic by that factor.
    const int64_t repeat = kv_head_repeat(k.size(2), heads.size());
    k_heads = heads_to_tokens(repeat > 1 ? k.repeat_interleave(repeat, 2).contiguous() : k, heads);
    v_heads = heads_to_tokens(repeat > 1 ? v.repeat_interleave(repeat, 2).contiguous() : v, heads);
    if (q_key_starts.defined()) key_starts = gather_tokens(q_key_starts, heads);
  }
  const auto out = attend(q_heads, k_heads, v_heads, estimate, dense, key_starts);
  ObservedPhase phase(observer_, kHeadAllToAllPhase);
  return tokens_to_heads(out, heads);
}

at::Tensor RingAttention::attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 bool estimate, bool dense, const at::Tensor& q_key_starts) {
  const int cp_rank = groups_.cp->rank();
  const bool dense_pattern = dense || !config_.sparse;
  kernels::VerticalSlashPattern pattern;
  if (dense_pattern) {
    pattern = kernels::dense_pattern(q.size(2), layout_.sequence_length(), layout_.block_size(),
                                     q.device());
  } else {
    if (estimate || !has_pattern_) {
      at::NoGradGuard no_grad;
      pattern_ = estimate_pattern(q.detach(), k.detach());
      has_pattern_ = true;
    }
    pattern = pattern_;
  }
  // cuDNN has no document mask: with documents every step runs our kernels.
  const bool use_cudnn =
      dense_pattern && config_.cudnn_dense && q.is_cuda() && !q_key_starts.defined();
  auto plan = c10::make_intrusive<RingPlan>();
  plan->groups = groups_;
  plan->softmax_scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  plan->deterministic = config_.deterministic_backward;
  plan->observer = observer_;
  const auto q_blocks = layout_.blocks_of(cp_rank).to(q.device());
  stats_ = {};
  const auto q_block_ids = layout_.blocks_of(cp_rank);
  for (int source = 0; source < layout_.world(); ++source) {
    const auto k_block_ids = layout_.blocks_of(source);
    // Keys need no document data of their own: their positions follow from the kv block ids.
    ShardBlocks blocks{q_blocks, k_block_ids.to(q.device()), q_key_starts};
    plan->blocks.push_back(blocks);
    plan->plain_parts.push_back(
        use_cudnn ? plain_parts(q_block_ids, k_block_ids, layout_.block_size()) : std::nullopt);
    if (plan->plain_parts.back()) {
      plan->indices.emplace_back();
      stats_.attended_pairs += causal_block_pairs(q_block_ids, k_block_ids) * q.size(0) *
                               q.size(2) * layout_.block_size() * layout_.block_size();
      continue;
    }
    // On the GPU the transposed blocks select the fast kv-block-outer backward; the
    // deterministic backward also walks the transposed columns.
    const auto transpose = config_.deterministic_backward ? kernels::Transpose::kBlocksAndColumns
                           : q.is_cuda()                  ? kernels::Transpose::kBlocks
                                                          : kernels::Transpose::kNone;
    plan->indices.push_back(
        kernels::build_sparse_index(pattern, blocks, q.size(0), k.size(2), transpose));
    stats_.attended_pairs += kernels::attended_pairs(plan->indices.back());
  }
  stats_.dense_pairs =
      dense_pairs(layout_.blocks_of(cp_rank), q.size(0) * q.size(2), layout_.block_size());
  auto out = RingAttentionFunction::apply(q, k, v, plan);
  stats_.skipped_shards = plan->skipped_shards;
  return out;
}

}  // namespace sparsering::parallel

#include "trainer/state/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "parallel/head_all_to_all.h"

namespace sparsering::trainer {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// The CUDA context and NCCL's buffers (fixed), and the caching allocator's fragmentation, which
// grows with the size of the tensors it splits (4% of the GPU): memory the allocator's own peak
// does not show but the GPU does not have for tensors. The Qwen2.5-3B shape's 208K-token plan
// under a 3 GiB reserve alone ran out of memory on an 80 GB H100.
constexpr int64_t kReservedBytes = 3LL << 30;
constexpr double kFragmentationShare = 0.04;

// During a recomputed layer's backward the layer's saved tensors are live together with the
// gradients its backward makes (the SwiGLU's and attention's input gradients). 1.5x the saved set
// fits the peaks measured on one H100 (2026-12-07; bench/RESULTS.md) over two to three context
// lengths of the ~1.1B model and the Qwen2.5-3B and Llama-3-8B shapes, the plan 0-8% above them.
constexpr double kBackwardLayerFactor = 1.5;

// The largest context-parallel size `plan` suggests for a context that does not fit.
constexpr int kMaxContextParallel = 1024;

struct ParameterCounts {
  int64_t per_layer = 0, other = 0;
  int64_t total(int layers) const { return per_layer * layers + other; }
};

ParameterCounts count_parameters(const config::ModelConfig& m) {
  const int64_t h = m.hidden_size, kv = static_cast<int64_t>(m.num_kv_heads) * m.head_dim();
  ParameterCounts counts;
  counts.per_layer = 2 * h * h + 2 * h * kv + 3 * h * m.ffn_hidden_size + 2 * h;
  counts.other = static_cast<int64_t>(m.vocab_size) * h * (m.tie_embeddings ? 1 : 2) + h;
  return counts;
}

// The plan's total at train.sequence_length, with the reserve, within the GPU's memory.
bool fits(const MemoryPlan& plan, int64_t gpu_memory_bytes) {
  return plan.total_bytes + plan.reserved_bytes <= gpu_memory_bytes;
}

std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB", bytes / kGiB);
  return text;
}

}  // namespace

MemoryPlan plan_memory(const config::Experiment& e, int world_size, int64_t gpu_memory_bytes) {
  const auto& m = e.model;
  const int stage = e.parallel.zero_stage;
  const int64_t w = std::max(1, world_size);
  const int64_t b = e.train.dtype == config::DType::kBFloat16 ? 2 : 4;
  const bool separate_masters = b != 4;
  const ParameterCounts counts = count_parameters(m);
  const int64_t p = counts.total(m.num_layers);
  // Stage 2 and 3 reduce a layer's gradients as its (recomputed) backward ends; without
  // activation checkpointing stage 2 reduces after the whole backward, as stage 1 does.
  const bool layerwise_gradients = stage >= 2 && m.activation_checkpointing;

  MemoryPlan plan;
  plan.world_size = world_size;
  plan.parameters = p;
  // Stage 3 holds the layers' slices plus two whole layers (the running one and the prefetched
  // next) when sharded over several ranks; on one rank the slices are the layers themselves.
  const int64_t gathered = w > 1 ? 2 * counts.per_layer : 0;
  plan.weight_bytes =
      stage == 3 ? (counts.other + counts.per_layer * m.num_layers / w + gathered) * b : p * b;
  const int64_t full_gradients =
      layerwise_gradients ? (counts.other + counts.per_layer) * b : p * b;
  if (stage == 0) {
    plan.gradient_bytes = full_gradients + (separate_masters ? 4 * p : 0);
    plan.optimizer_bytes = (separate_masters ? 4 * p : 0) + 8 * p;
  } else {
    const int64_t shard_state = 12 * p / w;
    // The flat bucket a reduction sums in: the largest bucket, in the reduction dtype.
    const int64_t bucket = std::max(counts.per_layer, counts.other) * std::max<int64_t>(b, 4);
    // The reduced slice: fp32, or in the model's dtype on the GPU when the optimizer is offloaded.
    const int64_t shard_gradients = (e.optimizer.offload_to_cpu ? b : 4) * p / w;
    plan.gradient_bytes = full_gradients + bucket + shard_gradients;
    if (e.optimizer.offload_to_cpu) {
      plan.host_optimizer_bytes = shard_state;
    } else {
      plan.optimizer_bytes = shard_state;
    }
  }

  // Activations per local token. A layer keeps its input (checkpointing) or every tensor autograd
  // saves: norms, q/k/v, attention output and its log-sum-exp, o_proj, the SwiGLU's gate, up,
  // activation and product. The peak comes at one of two moments: at the loss (every layer's
  // kept tensors plus the loss workspace) or in the first layer's backward (the same tensors,
  // the loss workspace freed, plus one layer's saved set and its gradients,
  // kBackwardLayerFactor x the saved set).
  const int64_t h = m.hidden_size, f = m.ffn_hidden_size;
  const int64_t kv = static_cast<int64_t>(m.num_kv_heads) * m.head_dim();
  // Head parallelism (u > 1): attention holds the exchanged q, k, v and output besides the
  // layer's own, K/V repeated kv_head_repeat times when u does not divide their heads.
  const int u = e.parallel.head_parallel_size;
  const int64_t exchanged_kv = kv * parallel::kv_head_repeat(m.num_kv_heads, u);
  const double exchange = u > 1 ? static_cast<double>(2 * b * (2 * h + 2 * exchanged_kv)) : 0.0;
  const double layer_saved =
      static_cast<double>(b * (7 * h + 2 * kv + 4 * f) + 4 * m.num_heads) + exchange;
  // With a ring (cp / u > 1 ranks): double-buffered K/V shards in the forward; in the backward
  // K/V with their fp32 dK/dV travelling alongside.
  const double ring = e.parallel.context_parallel_size / u > 1
                          ? static_cast<double>(exchanged_kv * (4 * b + 8))
                          : 0.0;
  // The embedding output and its gradient, and what every layer keeps until its backward.
  const double kept = static_cast<double>(2 * h * b) +
                      (m.activation_checkpointing ? static_cast<double>(m.num_layers * h * b)
                                                  : m.num_layers * layer_saved);
  plan.loss_bytes_per_token = kept + ring;
  plan.activation_bytes_per_token = kept + ring + kBackwardLayerFactor * layer_saved;
  const int64_t micro = e.train.micro_batch_size;
  plan.local_tokens =
      static_cast<int64_t>(e.train.sequence_length) / e.parallel.context_parallel_size;
  // The loss holds fp32 logits and their gradient for one chunk of tokens, or for every token
  // when loss_chunk_tokens is 0 (then they grow with the context like the activations).
  const double logits_per_token = 2.0 * 4 * static_cast<double>(m.vocab_size);
  const int64_t tokens_here = plan.local_tokens * micro;
  plan.workspace_bytes = static_cast<int64_t>(
      logits_per_token * (m.loss_chunk_tokens > 0
                              ? std::min<int64_t>(m.loss_chunk_tokens, tokens_here)
                              : tokens_here));
  const int64_t state = plan.weight_bytes + plan.gradient_bytes + plan.optimizer_bytes;
  const double tokens = static_cast<double>(tokens_here);
  plan.total_bytes = state + static_cast<int64_t>(
                                 std::max(plan.workspace_bytes + plan.loss_bytes_per_token * tokens,
                                          plan.activation_bytes_per_token * tokens));
  if (gpu_memory_bytes > 0) {
    plan.reserved_bytes =
        kReservedBytes + static_cast<int64_t>(kFragmentationShare * gpu_memory_bytes);
    const double free_bytes = static_cast<double>(gpu_memory_bytes - plan.reserved_bytes - state);
    // At any length a chunked loss needs at most one whole chunk; an unchunked one grows.
    const bool chunked = m.loss_chunk_tokens > 0;
    const double fixed = chunked ? logits_per_token * m.loss_chunk_tokens : 0.0;
    const double at_loss = plan.loss_bytes_per_token + (chunked ? 0.0 : logits_per_token);
    if (free_bytes > fixed) {
      const double fit =
          std::min((free_bytes - fixed) / at_loss, free_bytes / plan.activation_bytes_per_token);
      // Contexts are multiples of 2 x cp x block (validation's rule).
      const int64_t unit = 2LL * e.parallel.context_parallel_size * e.attention.block_size;
      plan.longest_context =
          static_cast<int64_t>(fit / micro) * e.parallel.context_parallel_size / unit * unit;
      // Past model.max_context the model cannot run whatever the memory.
      plan.context_limited_by_model = plan.longest_context > m.max_context;
      if (plan.context_limited_by_model) plan.longest_context = m.max_context / unit * unit;
    }
  }
  return plan;
}

int smallest_fitting_context_parallel(const config::Experiment& e, int world_size,
                                      int64_t gpu_memory_bytes) {
  const int dp = std::max(1, world_size / e.parallel.context_parallel_size);
  for (int cp = std::max(1, e.parallel.head_parallel_size); cp <= kMaxContextParallel; cp *= 2) {
    // Validation's layout rule: whole 2 x cp blocks per sequence.
    if (e.train.sequence_length % (2LL * cp * e.attention.block_size) != 0) break;
    config::Experiment trial = e;
    trial.parallel.context_parallel_size = cp;
    if (fits(plan_memory(trial, dp * cp, gpu_memory_bytes), gpu_memory_bytes)) return cp;
  }
  return 0;
}

int64_t planned_peak_bytes(const config::Experiment& e) {
  const int world = e.parallel.data_parallel_size * e.parallel.context_parallel_size;
  return plan_memory(e, world, /*gpu_memory_bytes=*/0).total_bytes;
}

std::string memory_plan_table(const config::Experiment& e, const MemoryPlan& plan,
                              int64_t gpu_memory_bytes) {
  std::ostringstream out;
  out << "memory plan: '" << e.name << "', " << plan.parameters / 1e9 << "B parameters, "
      << plan.world_size << " rank(s), zero_stage " << e.parallel.zero_stage
      << (e.optimizer.offload_to_cpu ? ", optimizer offloaded to the CPU" : "")
      << (e.model.activation_checkpointing ? ", activation checkpointing" : "") << "\n";
  out << "  per rank                      bytes\n";
  out << "  weights                       " << gib(plan.weight_bytes) << "\n";
  out << "  gradients                     " << gib(plan.gradient_bytes) << "\n";
  out << "  optimizer state (GPU)         " << gib(plan.optimizer_bytes) << "\n";
  out << "  optimizer state (host)        " << gib(plan.host_optimizer_bytes) << "\n";
  out << "  activations per token         " << plan.activation_bytes_per_token / 1024.0
      << " KiB in the backward, " << plan.loss_bytes_per_token / 1024.0
      << " KiB at the loss (x micro_batch_size " << e.train.micro_batch_size << ")\n";
  out << "  loss workspace                " << gib(plan.workspace_bytes)
      << " (freed before the backward)\n";
  out << "  at " << e.train.sequence_length << " tokens (" << plan.local_tokens << " per rank)     "
      << gib(plan.total_bytes) << "\n";
  if (gpu_memory_bytes > 0) {
    out << "  longest context in " << gib(gpu_memory_bytes) << " per GPU ("
        << gib(plan.reserved_bytes) << " reserved for the CUDA context, NCCL and fragmentation): ";
    if (plan.longest_context > 0) {
      out << plan.longest_context << " tokens"
          << (plan.context_limited_by_model ? " (model.max_context; the memory holds more)" : "")
          << "\n";
    } else {
      out << "none: the model state and the loss workspace leave no room for a context; raise "
             "parallel.zero_stage, use optimizer.offload=CPU, more ranks or a smaller "
             "model.loss_chunk_tokens\n";
    }
    if (!fits(plan, gpu_memory_bytes)) {
      // Context parallelism splits the activations and, under stages 1-3, the state too.
      const int cp = smallest_fitting_context_parallel(e, plan.world_size, gpu_memory_bytes);
      const int dp = std::max(1, plan.world_size / e.parallel.context_parallel_size);
      out << "  " << e.train.sequence_length << " tokens do not fit " << gib(gpu_memory_bytes)
          << " per GPU at context_parallel_size " << e.parallel.context_parallel_size << "; ";
      if (cp > 0) {
        out << "they fit at parallel.context_parallel_size=" << cp << " (" << dp * cp
            << " ranks with data_parallel_size " << dp << ")\n";
      } else {
        out << "no context_parallel_size up to " << kMaxContextParallel
            << " (of those the length allows) makes them fit\n";
      }
    }
  }
  return out.str();
}

}  // namespace sparsering::trainer

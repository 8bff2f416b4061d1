// Llama / Qwen2-style decoder: RMSNorm, RoPE at global positions, grouped-query attention through
// the sparse ring, SwiGLU MLP. Each rank runs the model on its own tokens of the sequence; only
// attention talks to the other ranks of the context-parallel ring.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <string>
#include <vector>

#include "configs/config.h"
#include "parallel/ring_attention.h"
#include "trainer/model/rope.h"
#include "trainer/profiling/profiler.h"

namespace sparsering::trainer {

class NMSparsity;

// parallel.zero_stage 3: the decoder layers' weights are held as slices and made whole only while
// a layer runs (trainer/state/sharded_optimizer.h).
class LayerGather {
 public:
  virtual ~LayerGather() = default;
  // Makes layer `layer`'s weights whole on this rank (an all-gather over the mesh).
  virtual void acquire(int layer) = 0;
  // Frees them again.
  virtual void release(int layer) = 0;
  // The layer's gradients of this backward are complete: reduce-scatter them to their owners,
  // then free the weights and gradients.
  virtual void backward_done(int layer) = 0;
};

// Per-forward inputs every layer shares.
struct StepContext {
  at::Tensor rope_cos, rope_sin;  // [local_tokens, head_dim / 2] at the tokens' global positions
  bool estimate_pattern = true;   // re-estimate the sparse pattern this step
  bool dense_attention = false;   // dense warm-up
  Profiler* profiler = nullptr;   // per-phase timing (profiling.enabled), else nullptr
  // Document masking (data.document_mask): int32 [batch, local_tokens] on the model's device, the
  // global position where each local token's document begins; attention then stays inside
  // documents. Undefined = causal attention over the whole sequence.
  at::Tensor key_starts;
  // zero_stage 3 (needs activation checkpointing): gathers each layer around its forward and its
  // recomputation. nullptr = the weights are whole on every rank.
  LayerGather* layer_gather = nullptr;
};

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t size, double eps);
  at::Tensor forward(const at::Tensor& x);

 private:
  at::Tensor weight_;
  double eps_;
};
TORCH_MODULE(RMSNorm);

// Projections whose weight `nm_sparsity` covers (nullptr: none) multiply with its N:M effective
// weight; `name_prefix` ("block0.attention.") completes their parameter names for it. With
// model.attention_bias, q/k/v add a bias (Qwen2), which N:M never covers (it covers ".weight"s).
class AttentionImpl : public torch::nn::Module {
 public:
  AttentionImpl(const config::ModelConfig& model, std::shared_ptr<parallel::RingAttention> ring,
                const NMSparsity* nm_sparsity = nullptr, std::string name_prefix = "");
  at::Tensor forward(const at::Tensor& x, const StepContext& context);
  const parallel::RingAttention& ring() const { return *ring_; }

 private:
  int64_t heads_, kv_heads_, head_dim_;
  torch::nn::Linear q_proj_{nullptr}, k_proj_{nullptr}, v_proj_{nullptr}, o_proj_{nullptr};
  std::shared_ptr<parallel::RingAttention> ring_;
  const NMSparsity* nm_sparsity_;
  std::string name_prefix_;
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const config::ModelConfig& model, const NMSparsity* nm_sparsity = nullptr,
                   std::string name_prefix = "");
  at::Tensor forward(const at::Tensor& x);

 private:
  torch::nn::Linear gate_proj_{nullptr}, up_proj_{nullptr}, down_proj_{nullptr};
  const NMSparsity* nm_sparsity_;
  std::string name_prefix_;
};
TORCH_MODULE(Mlp);

class DecoderBlockImpl : public torch::nn::Module {
 public:
  DecoderBlockImpl(const config::ModelConfig& model, std::shared_ptr<parallel::RingAttention> ring,
                   const NMSparsity* nm_sparsity = nullptr, const std::string& name_prefix = "");
  at::Tensor forward(const at::Tensor& x, const StepContext& context);
  const Attention& attention() const { return attention_; }

 private:
  RMSNorm attention_norm_{nullptr}, mlp_norm_{nullptr};
  Attention attention_{nullptr};
  Mlp mlp_{nullptr};
};
TORCH_MODULE(DecoderBlock);

class DecoderImpl : public torch::nn::Module {
 public:
  // One ring attention per layer: each layer keeps its own estimated pattern. `nm_sparsity`
  // (nullptr when disabled) must outlive the model.
  DecoderImpl(const config::ModelConfig& model,
              std::vector<std::shared_ptr<parallel::RingAttention>> rings,
              const NMSparsity* nm_sparsity = nullptr);

  // tokens [batch, local_tokens] int64 -> final hidden states [batch, local_tokens, hidden].
  at::Tensor forward(const at::Tensor& tokens, const StepContext& context);
  // The output projection [vocab, hidden] (the embedding when tied).
  at::Tensor output_weight() const;
  const std::vector<DecoderBlock>& blocks() const { return blocks_; }

 private:
  config::ModelConfig config_;
  torch::nn::Embedding embedding_{nullptr};
  std::vector<DecoderBlock> blocks_;
  RMSNorm final_norm_{nullptr};
  torch::nn::Linear lm_head_{nullptr};
};
TORCH_MODULE(Decoder);

// Normal(0, init_std) for every linear and embedding weight, ones for the norms, from the
// current generator state (seeded identically on all ranks so replicas start equal).
void initialize_weights(Decoder& model, double init_std);

}  // namespace sparsering::trainer

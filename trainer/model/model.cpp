#include "trainer/model/model.h"

#include <torch/nn/init.h>

#include "trainer/model/activation_checkpoint.h"
#include "trainer/nm/nm_sparsity.h"

namespace sparsering::trainer {
namespace {

torch::nn::Linear linear(int64_t in, int64_t out, bool bias = false) {
  return torch::nn::Linear(torch::nn::LinearOptions(in, out).bias(bias));
}

// x W^T (+ b), through the N:M effective weight when `nm_sparsity` covers the projection's
// weight; a bias stays dense.
at::Tensor project(torch::nn::Linear& projection, const NMSparsity* nm_sparsity,
                   const std::string& weight_name, const at::Tensor& x) {
  if (nm_sparsity == nullptr || !nm_sparsity->covers(weight_name)) return projection(x);
  return at::linear(x, nm_sparsity->effective_weight(weight_name, projection->weight),
                    projection->bias);
}

// Rotates pairs (x1, x2) = (first half, second half) of the head dimension (Llama convention).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  // cos/sin [tokens, half] -> [1, tokens, 1, half] against x [batch, tokens, heads, dim].
  const auto c = cos.unsqueeze(0).unsqueeze(2).to(x.scalar_type());
  const auto s = sin.unsqueeze(0).unsqueeze(2).to(x.scalar_type());
  return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
}

}  // namespace

RMSNormImpl::RMSNormImpl(int64_t size, double eps) : eps_(eps) {
  weight_ = register_parameter("weight", at::ones({size}));
}

at::Tensor RMSNormImpl::forward(const at::Tensor& x) {
  const auto x32 = x.to(at::kFloat);
  const auto normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps_);
  return normed.to(x.scalar_type()) * weight_;
}

AttentionImpl::AttentionImpl(const config::ModelConfig& model,
                             std::shared_ptr<parallel::RingAttention> ring,
                             const NMSparsity* nm_sparsity, std::string name_prefix)
    : heads_(model.num_heads),
      kv_heads_(model.num_kv_heads),
      head_dim_(model.head_dim()),
      ring_(std::move(ring)),
      nm_sparsity_(nm_sparsity),
      name_prefix_(std::move(name_prefix)) {
  const bool bias = model.attention_bias;
  q_proj_ = register_module("q_proj", linear(model.hidden_size, heads_ * head_dim_, bias));
  k_proj_ = register_module("k_proj", linear(model.hidden_size, kv_heads_ * head_dim_, bias));
  v_proj_ = register_module("v_proj", linear(model.hidden_size, kv_heads_ * head_dim_, bias));
  o_proj_ = register_module("o_proj", linear(heads_ * head_dim_, model.hidden_size));
}

at::Tensor AttentionImpl::forward(const at::Tensor& x, const StepContext& context) {
  const int64_t batch = x.size(0), tokens = x.size(1);
  auto q = project(q_proj_, nm_sparsity_, name_prefix_ + "q_proj.weight", x)
               .view({batch, tokens, heads_, head_dim_});
  auto k = project(k_proj_, nm_sparsity_, name_prefix_ + "k_proj.weight", x)
               .view({batch, tokens, kv_heads_, head_dim_});
  const auto v = project(v_proj_, nm_sparsity_, name_prefix_ + "v_proj.weight", x)
                     .view({batch, tokens, kv_heads_, head_dim_});
  q = apply_rope(q, context.rope_cos, context.rope_sin);
  k = apply_rope(k, context.rope_cos, context.rope_sin);
  const auto out =
      ring_->forward(q.contiguous(), k.contiguous(), v.contiguous(), context.estimate_pattern,
                     context.dense_attention, context.key_starts);
  return project(o_proj_, nm_sparsity_, name_prefix_ + "o_proj.weight",
                 out.reshape({batch, tokens, heads_ * head_dim_}));
}

MlpImpl::MlpImpl(const config::ModelConfig& model, const NMSparsity* nm_sparsity,
                 std::string name_prefix)
    : nm_sparsity_(nm_sparsity), name_prefix_(std::move(name_prefix)) {
  gate_proj_ = register_module("gate_proj", linear(model.hidden_size, model.ffn_hidden_size));
  up_proj_ = register_module("up_proj", linear(model.hidden_size, model.ffn_hidden_size));
  down_proj_ = register_module("down_proj", linear(model.ffn_hidden_size, model.hidden_size));
}

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  const auto gate = project(gate_proj_, nm_sparsity_, name_prefix_ + "gate_proj.weight", x);
  const auto up = project(up_proj_, nm_sparsity_, name_prefix_ + "up_proj.weight", x);
  return project(down_proj_, nm_sparsity_, name_prefix_ + "down_proj.weight", at::silu(gate) * up);
}

DecoderBlockImpl::DecoderBlockImpl(const config::ModelConfig& model,
                                   std::shared_ptr<parallel::RingAttention> ring,
                                   const NMSparsity* nm_sparsity, const std::string& name_prefix) {
  attention_norm_ =
      register_module("attention_norm", RMSNorm(model.hidden_size, model.rms_norm_eps));
  attention_ = register_module(
      "attention", Attention(model, std::move(ring), nm_sparsity, name_prefix + "attention."));
  mlp_norm_ = register_module("mlp_norm", RMSNorm(model.hidden_size, model.rms_norm_eps));
  mlp_ = register_module("mlp", Mlp(model, nm_sparsity, name_prefix + "mlp."));
}

at::Tensor DecoderBlockImpl::forward(const at::Tensor& x, const StepContext& context) {
  at::Tensor h;
  {
    ProfileScope scope(context.profiler, "attention");
    h = x + attention_(attention_norm_(x), context);
  }
  ProfileScope scope(context.profiler, "mlp");
  return h + mlp_(mlp_norm_(h));
}

DecoderImpl::DecoderImpl(const config::ModelConfig& model,
                         std::vector<std::shared_ptr<parallel::RingAttention>> rings,
                         const NMSparsity* nm_sparsity)
    : config_(model) {
  embedding_ =
      register_module("embedding", torch::nn::Embedding(model.vocab_size, model.hidden_size));
  for (int layer = 0; layer < model.num_layers; ++layer) {
    const std::string name = "block" + std::to_string(layer);
    blocks_.push_back(
        register_module(name, DecoderBlock(model, rings.at(layer), nm_sparsity, name + ".")));
  }
  final_norm_ = register_module("final_norm", RMSNorm(model.hidden_size, model.rms_norm_eps));
  if (!model.tie_embeddings) {
    lm_head_ = register_module("lm_head", linear(model.hidden_size, model.vocab_size));
  }
}

at::Tensor DecoderImpl::forward(const at::Tensor& tokens, const StepContext& context) {
  auto x = embedding_(tokens);
  LayerGather* gather = context.layer_gather;
  for (int layer = 0; layer < static_cast<int>(blocks_.size()); ++layer) {
    auto& block = blocks_[layer];
    if (config_.activation_checkpointing) {
      // The recomputation in backward must reuse this forward's sparse pattern.
      StepContext recompute = context;
      recompute.estimate_pattern = false;
      x = checkpoint(
          [block, context, gather, layer](const at::Tensor& input) mutable {
            if (gather) gather->acquire(layer);
            auto output = block(input, context);
            if (gather) gather->release(layer);
            return output;
          },
          [block, recompute, gather, layer](const at::Tensor& input) mutable {
            if (gather) gather->acquire(layer);
            return block(input, recompute);
          },
          x,
          gather ? std::function<void()>([gather, layer] { gather->backward_done(layer); })
                 : nullptr);
    } else {
      x = block(x, context);
    }
  }
  return final_norm_(x);
}

at::Tensor DecoderImpl::output_weight() const {
  return config_.tie_embeddings ? embedding_->weight : lm_head_->weight;
}

void initialize_weights(Decoder& model, double init_std) {
  torch::NoGradGuard no_grad;
  for (auto& named : model->named_parameters()) {
    auto& p = named.value();
    const std::string& name = named.key();
    if (name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0) {
      p.zero_();  // q/k/v biases, as transformers initialises them
    } else if (p.dim() == 1) {
      p.fill_(1.0);  // RMSNorm gains
    } else {
      p.normal_(0.0, init_std);
    }
  }
}

}  // namespace sparsering::trainer

#include "trainer/model/model_setup.h"

#include <torch/utils.h>

#include <cmath>

namespace sparsering::trainer {

at::ScalarType model_dtype(const config::Experiment& e) {
  return e.train.dtype == config::DType::kBFloat16 ? at::kBFloat16 : at::kFloat;
}

int64_t pattern_budget(int absolute, double fraction, int64_t sequence_length) {
  if (absolute > 0) return absolute;
  return static_cast<int64_t>(std::llround(fraction * sequence_length));
}

parallel::TokenLayout token_layout(const config::Experiment& e, int64_t sequence_length) {
  const int block_size = e.attention.block_size;
  return parallel::TokenLayout(e.parallel.layout, sequence_length / block_size, block_size,
                               e.parallel.context_parallel_size);
}

parallel::RingAttentionConfig ring_attention_config(const config::Experiment& e,
                                                    int64_t sequence_length) {
  parallel::RingAttentionConfig ring_config;
  ring_config.sparse = e.attention.kind == config::AttentionKind::kSparse;
  ring_config.num_columns =
      pattern_budget(e.attention.vertical_budget, e.attention.vertical_fraction, sequence_length);
  ring_config.num_diagonals =
      pattern_budget(e.attention.slash_budget, e.attention.slash_fraction, sequence_length);
  ring_config.sink_tokens = e.attention.sink_tokens;
  ring_config.local_tokens = e.attention.local_tokens;
  ring_config.estimation_queries = e.attention.estimation_queries;
  ring_config.deterministic_backward = e.attention.deterministic_backward;
  ring_config.cudnn_dense = e.attention.cudnn_dense;
  return ring_config;
}

std::vector<std::shared_ptr<parallel::RingAttention>> make_rings(
    const config::Experiment& e, const parallel::RingAttentionConfig& ring_config,
    parallel::RingGroups groups, const parallel::TokenLayout& layout) {
  std::vector<std::shared_ptr<parallel::RingAttention>> rings;
  for (int layer = 0; layer < e.model.num_layers; ++layer) {
    rings.push_back(std::make_shared<parallel::RingAttention>(ring_config, groups, layout));
  }
  return rings;
}

Decoder make_decoder(const config::Experiment& e,
                     std::vector<std::shared_ptr<parallel::RingAttention>> rings,
                     const NMSparsity* nm_sparsity, const at::Device& device) {
  torch::manual_seed(e.train.seed);
  Decoder model(e.model, std::move(rings), nm_sparsity);
  initialize_weights(model, e.model.init_std);
  model->to(device, model_dtype(e));
  return model;
}

void set_rope_tables(StepContext& context, const parallel::TokenLayout& layout, int cp_rank,
                     const config::ModelConfig& model, const at::Device& device) {
  std::tie(context.rope_cos, context.rope_sin) = rope_tables(layout.positions_of(cp_rank), model);
  context.rope_cos = context.rope_cos.to(device);
  context.rope_sin = context.rope_sin.to(device);
}

void set_document_mask(StepContext& context, const config::Experiment& e, const MicroBatch& batch,
                       const parallel::TokenLayout& layout, int cp_rank, const at::Device& device) {
  context.key_starts = e.data.document_mask
                           ? layout.shard(batch.document_starts, cp_rank).to(device).contiguous()
                           : at::Tensor();
}

}  // namespace sparsering::trainer

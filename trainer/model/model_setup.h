// The model exactly as training builds it (token layout, one ring attention per layer, decoder,
// RoPE tables at this rank's global positions), shared by `sparsering train` and `eval` so that
// an evaluated checkpoint runs through the same code it was trained with.
#pragma once

#include <memory>
#include <vector>

#include "configs/config.h"
#include "parallel/layout.h"
#include "parallel/ring_attention.h"
#include "trainer/micro_batch.h"
#include "trainer/model/model.h"

namespace sparsering::trainer {

// The dtype of the model's weights and activations (train.dtype).
at::ScalarType model_dtype(const config::Experiment& experiment);

// Tokens of the pattern budgets: the absolute count when > 0, else the fraction of the sequence.
int64_t pattern_budget(int absolute, double fraction, int64_t sequence_length);

// parallel.layout over the context-parallel ranks for sequences of `sequence_length` tokens.
parallel::TokenLayout token_layout(const config::Experiment& experiment, int64_t sequence_length);

// The attention.* settings for sequences of `sequence_length` tokens (budgets given as fractions
// scale with the length).
parallel::RingAttentionConfig ring_attention_config(const config::Experiment& experiment,
                                                    int64_t sequence_length);

// One ring attention per layer: each layer keeps its own estimated pattern.
std::vector<std::shared_ptr<parallel::RingAttention>> make_rings(
    const config::Experiment& experiment, const parallel::RingAttentionConfig& ring_config,
    parallel::RingGroups groups, const parallel::TokenLayout& layout);

// The decoder on `device` in model_dtype, initialised from train.seed: the same seed on every
// rank, so replicas start identical without a broadcast. `nm_sparsity` (nullptr when disabled)
// must outlive the model.
Decoder make_decoder(const config::Experiment& experiment,
                     std::vector<std::shared_ptr<parallel::RingAttention>> rings,
                     const NMSparsity* nm_sparsity, const at::Device& device);

// Sets the RoPE tables of `context` to the global positions `layout` gives rank `cp_rank`.
void set_rope_tables(StepContext& context, const parallel::TokenLayout& layout, int cp_rank,
                     const config::ModelConfig& model, const at::Device& device);

// With data.document_mask, sets the key starts of `context` to the document starts of rank
// `cp_rank`'s tokens of `batch`, in the layout's order (as its tokens); otherwise clears them.
void set_document_mask(StepContext& context, const config::Experiment& experiment,
                       const MicroBatch& batch, const parallel::TokenLayout& layout, int cp_rank,
                       const at::Device& device);

}  // namespace sparsering::trainer

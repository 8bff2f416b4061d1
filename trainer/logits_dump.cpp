#include "trainer/logits_dump.h"

#include <torch/torch.h>

#include "trainer/hf/safetensors.h"
#include "trainer/micro_batch.h"
#include "trainer/model/model_setup.h"

namespace sparsering::trainer {

at::Tensor sequence_logits(LengthModel& m, const std::vector<data::SequenceExample>& sequences,
                           bool dense, const config::Experiment& e, parallel::ProcessGroups& groups,
                           const at::Device& device) {
  torch::NoGradGuard no_grad;
  const int cp_rank = groups.cp_rank();
  const MicroBatch batch = labelled_batch(sequences, m.sequence_length);
  const auto tokens = m.layout.shard(batch.tokens, cp_rank).to(device);
  set_document_mask(m.context, e, batch, m.layout, cp_rank, device);
  m.context.estimate_pattern = true;
  m.context.dense_attention = dense;
  const auto hidden = m.model->forward(tokens, m.context);
  // [batch, local tokens, vocab] in fp32, as transformers' lm_head in fp32 computes them.
  const auto logits =
      at::matmul(hidden.to(at::kFloat), m.model->output_weight().to(at::kFloat).t()).contiguous();
  return m.layout.unshard(groups.cp().all_gather(logits).cpu());
}

void write_held_out_logits(const std::string& path, LengthModel& model,
                           data::SequenceSource& source, uint64_t first_index,
                           const std::vector<std::string>& modes, const config::Experiment& e,
                           parallel::ProcessGroups& groups, const at::Device& device) {
  std::vector<data::SequenceExample> sequences;
  for (int i = 0; i < e.train.micro_batch_size; ++i) {
    sequences.push_back(source.example(first_index + static_cast<uint64_t>(i)));
  }
  NamedTensors tensors;
  for (const auto& mode : modes) {
    tensors.emplace_back("logits." + mode,
                         sequence_logits(model, sequences, mode == "dense", e, groups, device));
  }
  const MicroBatch batch = labelled_batch(sequences, model.sequence_length);
  tensors.emplace_back("tokens", batch.tokens.to(at::kFloat));
  tensors.emplace_back("document_starts", batch.document_starts.to(at::kFloat));
  if (groups.world_rank() == 0) write_safetensors(path, tensors);
  groups.world().barrier();
}

}  // namespace sparsering::trainer

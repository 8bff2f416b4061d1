#include "trainer/micro_batch.h"

#include "trainer/chunked_loss.h"

namespace sparsering::trainer {

MicroBatch micro_batch(const config::Experiment& e, data::SequenceSource& source, int64_t step,
                       int micro, int dp_rank) {
  const int64_t mb = e.train.micro_batch_size;
  const int64_t global_batch = mb * e.parallel.data_parallel_size;
  const int64_t micro_steps = e.optimizer.grad_accumulation_steps;
  std::vector<data::SequenceExample> examples;
  for (int64_t i = 0; i < mb; ++i) {
    examples.push_back(source.example((step * micro_steps + micro) * global_batch +
                                      static_cast<int64_t>(dp_rank) * mb + i));
  }
  return labelled_batch(examples, e.train.sequence_length);
}

MicroBatch labelled_batch(const std::vector<data::SequenceExample>& examples, int64_t length) {
  const auto batch = static_cast<int64_t>(examples.size());
  std::vector<int64_t> tokens(batch * length), labels(batch * length, kIgnoreLabel);
  for (int64_t i = 0; i < batch; ++i) {
    const data::SequenceExample& example = examples[i];
    int64_t* row_tokens = tokens.data() + i * length;
    int64_t* row_labels = labels.data() + i * length;
    std::copy(example.tokens.begin(), example.tokens.end(), row_tokens);
    if (example.answer_positions.empty()) {
      for (int64_t t = 0; t + 1 < length; ++t) row_labels[t] = row_tokens[t + 1];
    } else {
      // The answer at position p is predicted from position p - 1.
      for (const auto p : example.answer_positions) row_labels[p - 1] = row_tokens[p];
    }
  }
  return {at::tensor(tokens, at::kLong).view({batch, length}),
          at::tensor(labels, at::kLong).view({batch, length})};
}

}  // namespace sparsering::trainer

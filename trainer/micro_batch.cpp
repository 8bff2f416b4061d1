#include "trainer/micro_batch.h"

#include <stdexcept>
#include <string>

#include "trainer/model/chunked_loss.h"

namespace sparsering::trainer {
namespace {

// Documents are contiguous runs of one id, so each token's document starts where its run does.
void fill_document_starts(const std::vector<int32_t>& document_ids, int32_t* starts,
                          int64_t length) {
  if (!document_ids.empty() && static_cast<int64_t>(document_ids.size()) != length) {
    throw std::logic_error("labelled_batch: " + std::to_string(document_ids.size()) +
                           " document ids for a sequence of " + std::to_string(length) + " tokens");
  }
  int32_t start = 0;
  for (int64_t t = 0; t < length; ++t) {
    if (t > 0 && !document_ids.empty() && document_ids[t] != document_ids[t - 1]) {
      start = static_cast<int32_t>(t);
    }
    starts[t] = start;
  }
}

}  // namespace

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
  std::vector<int32_t> document_starts(batch * length);
  for (int64_t i = 0; i < batch; ++i) {
    const data::SequenceExample& example = examples[i];
    int64_t* row_tokens = tokens.data() + i * length;
    int64_t* row_labels = labels.data() + i * length;
    std::copy(example.tokens.begin(), example.tokens.end(), row_tokens);
    fill_document_starts(example.document_ids, document_starts.data() + i * length, length);
    if (example.answer_positions.empty()) {
      for (int64_t t = 0; t + 1 < length; ++t) row_labels[t] = row_tokens[t + 1];
    } else {
      // The answer at position p is predicted from position p - 1.
      for (const auto p : example.answer_positions) row_labels[p - 1] = row_tokens[p];
    }
  }
  return {at::tensor(tokens, at::kLong).view({batch, length}),
          at::tensor(labels, at::kLong).view({batch, length}),
          at::tensor(document_starts, at::kInt).view({batch, length})};
}

}  // namespace sparsering::trainer

// The results of `sparsering eval` and their three renderings: the table rank 0 prints,
// <run dir>/eval.json, and the needle-in-a-haystack heatmap (a binary PPM image).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sparsering::trainer {

// Passkey retrieval over context length x needle depth (data::needle_grid).
struct NeedleGrid {
  std::vector<int64_t> lengths;  // ascending
  std::vector<double> depths;    // in [0, 1]: 0 = needle first, 1 = just before the question
  // [length][depth]: fraction of passkeys retrieved whole, and of their digits predicted right.
  std::vector<std::vector<double>> accuracy, digit_accuracy;
  double mean_accuracy() const;
};

// One attention mode's results on the checkpoint.
struct AttentionResult {
  std::string attention;         // "dense" or "sparse"
  double loss = 0;               // mean cross-entropy per target token of the held-out sequences
  double perplexity = 0;         // exp(loss)
  double attention_density = 0;  // (query, key) pairs computed / causal pairs
  std::optional<NeedleGrid> needle;       // data.source = PASSKEY
  std::optional<double> recall_accuracy;  // ASSOCIATIVE_RECALL: queries answered right
  // SYNTHETIC_COPY: tokens after the first period predicted right (each repeats the token one
  // period back, so this measures retrieval over that distance).
  std::optional<double> copy_accuracy;
};

struct EvalReport {
  std::string checkpoint;  // the step directory
  int64_t step = 0;
  std::string data;  // the data source's description
  int64_t sequence_length = 0;
  int64_t sequences = 0;  // held-out sequences behind the loss (and the recall accuracy)
  uint64_t first_sequence_index = 0;
  // Synthetic sources never repeat an index, so sequences from first_sequence_index on were never
  // trained on; a corpus wraps around its epochs and has no held-out part of its own.
  bool held_out = true;
  std::string loss_targets;              // "answers" (task sources) or "next tokens"
  std::vector<AttentionResult> results;  // one per attention mode, shown side by side
};

std::string format_eval_table(const EvalReport& report);
std::string eval_json(const EvalReport& report);

// Every result's needle grid side by side, one square per cell from red (0) through yellow to
// green (1): depth grows downwards, context length to the right. Throws when it cannot write.
void write_needle_heatmap(const EvalReport& report, const std::string& path);

}  // namespace sparsering::trainer

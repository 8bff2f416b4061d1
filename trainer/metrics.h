// Per-step metrics: one console line on rank 0 and one JSON object per line in metrics.jsonl.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "trainer/checkpoint/atomic_file.h"

namespace sparsering::trainer {

struct StepMetrics {
  int step = 0;
  double loss = 0, lr = 0, grad_norm = 0;
  double tokens_per_second = 0;
  double executed_tflops = 0;          // FLOP/s executed: the attended pairs of the sparse pattern
  double dense_equivalent_tflops = 0;  // as if attention were dense (causal), for comparison
  double mfu = -1;                     // executed FLOP/s over the GPUs' bf16 peak; -1 on CPU
  double attention_density = 0;        // attended / dense-causal pairs, mean over layers and ranks
  double imbalance = 1;                // max / mean attention work over context-parallel ranks
  double step_seconds = 0;
  int64_t skipped_steps = 0;  // non-finite steps skipped so far (train.nan_policy = SKIP_STEP)
};

class MetricsLog {
 public:
  // Opens (appends to) `path`; an empty path logs to the console only.
  explicit MetricsLog(const std::string& path);
  void write(const StepMetrics& metrics);
  static std::string console_line(const StepMetrics& metrics, int total_steps);

 private:
  AppendFile jsonl_;
};

}  // namespace sparsering::trainer

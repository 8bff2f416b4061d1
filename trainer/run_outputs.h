// What a training run leaves in its run directory besides checkpoints: the resolved config,
// metrics.jsonl cut back on resume, the profile summary and Chrome trace, and summary.json.
#pragma once

#include <string>
#include <vector>

#include "configs/config.h"
#include "parallel/communicator.h"
#include "trainer/metrics.h"
#include "trainer/profiling/profiler.h"
#include "trainer/state/training_optimizer.h"
#include "trainer/train.h"

namespace sparsering::trainer {

// Creates the directory and writes config.pbtxt (the resolved experiment). Rank 0 only.
void prepare_run_dir(const config::Experiment& e, const std::string& dir);

// metrics.jsonl keeps the steps up to `last_step` (0 = none): a resumed run rewrites the steps
// after its checkpoint instead of duplicating them.
void truncate_metrics(const std::string& path, int64_t last_step);

// Every rank's profile and trace events to rank 0, which prints the summary table and writes
// trace.json (Perfetto / chrome://tracing). Collective over `world`. `model_state` is this rank's
// RankProfile memory breakdown: weight, gradient and optimizer-state bytes. A positive
// `planned_peak_bytes` (the memory planner's per-rank total) is printed beside the measured peak.
void report_profile(Profiler& profiler, parallel::Communicator& world, const std::string& run_dir,
                    const ModelStateBytes& model_state, int64_t planned_peak_bytes);

// Means over the steps this call ran, for <run dir>/summary.json.
struct RunTotals {
  double tokens_per_second = 0, executed_tflops = 0, dense_equivalent_tflops = 0, mfu = 0,
         density = 0;
  int steps = 0;
  void add(const StepMetrics& m) {
    tokens_per_second += m.tokens_per_second;
    executed_tflops += m.executed_tflops;
    dense_equivalent_tflops += m.dense_equivalent_tflops;
    mfu += m.mfu;
    density += m.attention_density;
    ++steps;
  }
};

// summary.json marks a finished run (launch/sweep.sh skips runs that have one); written
// atomically.
void write_summary(const std::string& run_dir, const TrainResult& result, const RunTotals& totals,
                   bool on_gpu, double wall_seconds);

}  // namespace sparsering::trainer

// `sparsering eval`: loads a checkpoint into the model as training builds it and evaluates it
// without gradients: loss and perplexity on held-out sequences of the configured data source,
// passkey accuracy over a needle depth x context length grid (PASSKEY), recall accuracy
// (ASSOCIATIVE_RECALL), with dense or sparse attention, or both side by side on the same weights.
// Rank 0 prints a table and writes <run dir>/eval.json (and needle_heatmap.ppm for PASSKEY).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "configs/config.h"
#include "parallel/process_groups.h"
#include "trainer/eval_report.h"

namespace sparsering::trainer {

struct EvalOptions {
  std::string run_dir;              // empty = <train.runs_root>/<name>
  std::string checkpoint = "auto";  // "auto" = the run's newest intact checkpoint, else a path
  std::string attention;            // "dense", "sparse" or "both"; empty = attention.kind
  int sequences = 8;                // held-out sequences, and samples per needle-grid cell
  std::string logits_path;          // non-empty: write the first held-out sequences' logits there
};

// First sequence indices of the evaluation sets. Training reads indices below
// (steps + 1) x grad_accumulation_steps x global batch, far below 2^40, and synthetic sources
// never repeat a sequence, so these sequences were never trained on.
inline constexpr uint64_t kHeldOutFirstIndex = uint64_t{1} << 40;  // loss, recall accuracy
inline constexpr uint64_t kNeedleFirstIndex = uint64_t{1} << 41;   // the needle grid

// Needle depths of the grid, evenly spaced over [0, 1].
inline constexpr int kNeedleDepths = 5;

// Throws UserError when `options` names no checkpoint that exists. Every rank sees the same
// files, so calling it before any collective ends a job without a checkpoint with one line.
void require_checkpoint(const config::Experiment& experiment, const EvalOptions& options);

// Context lengths of the needle grid, ascending: train.sequence_length and its half and quarter,
// those that still satisfy its layout rule (a multiple of 2 x cp x block size) and hold a passkey.
std::vector<int64_t> needle_lengths(const config::Experiment& experiment);

// Evaluates on the job's ranks (every rank calls it); dp x cp must be the checkpoint's.
EvalReport evaluate(const config::Experiment& experiment, parallel::ProcessGroups& groups,
                    const at::Device& device, const EvalOptions& options);

}  // namespace sparsering::trainer

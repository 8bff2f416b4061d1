// `sparsering import-hf` and `export-hf`: move weights between a Hugging Face Llama / Qwen2
// safetensors directory and our checkpoints. Import writes a step-0 checkpoint (fresh optimizer
// state) that `sparsering train --resume auto` continues from; export writes config.json and
// model.safetensors (or shards and their index) in the model's dtype. Both run on the job's
// dp x cp ranks, because a checkpoint has one shard per rank of the job that trains from it.
#pragma once

#include <string>

#include "configs/config.h"
#include "parallel/process_groups.h"

namespace sparsering::trainer {

struct HfOptions {
  std::string run_dir;     // empty = <train.runs_root>/<name>
  std::string hf_dir;      // import: the Hugging Face model directory
  std::string checkpoint;  // export: "auto" or a checkpoint path
  std::string out_dir;     // export: where config.json and the safetensors go
  // export: the most tensor bytes per safetensors file (transformers' default max_shard_size, 5
  // GB); larger exports are split into shards with model.safetensors.index.json.
  int64_t max_shard_bytes = 5'000'000'000;
};

// Checks what each command reads exists, that import's config.json (architecture, RoPE) matches
// the model config, and that import does not mix into a run that already has checkpoints. Every
// rank sees the same files, so calling it before any collective ends a bad invocation with one
// line.
void check_hf_inputs(const std::string& command, const config::Experiment& experiment,
                     const HfOptions& options);

void import_hf(const config::Experiment& experiment, parallel::ProcessGroups& groups,
               const HfOptions& options);

void export_hf(const config::Experiment& experiment, parallel::ProcessGroups& groups,
               const HfOptions& options);

}  // namespace sparsering::trainer

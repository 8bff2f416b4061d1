#include "trainer/hf/hf_commands.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "configs/user_error.h"
#include "trainer/checkpoint/atomic_file.h"
#include "trainer/checkpoint/checkpoint.h"
#include "trainer/eval.h"
#include "trainer/hf/hf_weights.h"
#include "trainer/hf/safetensors.h"
#include "trainer/model/model_setup.h"
#include "trainer/nm/nm_sparsity.h"
#include "trainer/run_directory.h"
#include "trainer/run_paths.h"
#include "trainer/state/optimizer.h"

namespace sparsering::trainer {
namespace {

namespace fs = std::filesystem;

// The decoder as training builds it, on the CPU: import and export only move weights.
struct CpuModel {
  Decoder model{nullptr};
  std::vector<std::string> names;
  std::vector<at::Tensor> parameters;

  CpuModel(const config::Experiment& e, parallel::ProcessGroups& groups) {
    const parallel::TokenLayout layout = token_layout(e, e.train.sequence_length);
    model = make_decoder(e,
                         make_rings(e, ring_attention_config(e, e.train.sequence_length),
                                    groups.ring_groups(), layout),
                         /*nm_sparsity=*/nullptr, at::kCPU);
    for (const auto& named : model->named_parameters()) {
      names.push_back(named.key());
      parameters.push_back(named.value());
    }
  }
};

// Absent lm_head.weight means tied embeddings.
bool stores_lm_head(const std::vector<SafetensorsEntry>& hf) {
  return std::any_of(hf.begin(), hf.end(),
                     [](const auto& entry) { return entry.name == "lm_head.weight"; });
}

}  // namespace

void check_hf_inputs(const std::string& command, const config::Experiment& e,
                     const HfOptions& options) {
  if (command == "export-hf") {
    EvalOptions checkpoint_options;
    checkpoint_options.run_dir = options.run_dir;
    checkpoint_options.checkpoint = options.checkpoint;
    require_checkpoint(e, checkpoint_options);
    return;
  }
  if (!fs::is_regular_file(fs::path(options.hf_dir) / "config.json")) {
    throw UserError("--hf-dir " + options.hf_dir +
                    ": no config.json; give a Hugging Face model directory");
  }
  // The architecture and RoPE checks read only config.json and the safetensors headers.
  const std::vector<SafetensorsEntry> hf = list_safetensors_dir(options.hf_dir);
  check_hf_config(options.hf_dir, e.model, stores_lm_head(hf));
  const RunPaths paths = RunPaths::of(e, options.run_dir);
  const auto previous = previous_run_files(paths.run_dir, paths.checkpoint_dir);
  if (!previous.empty()) {
    throw UserError(paths.run_dir + " already holds checkpoints or other files of a run (" +
                    previous.front() + "); import into a new --run-dir");
  }
}

void import_hf(const config::Experiment& e, parallel::ProcessGroups& groups,
               const HfOptions& options) {
  // Every rank reads the weights (each saves its own shard of them), one tensor at a time
  // straight into the fp32 masters: the checkpoint's bytes are never all in memory at once.
  if (groups.world_rank() == 0) {
    std::cout << "sparsering: import-hf: reading " << options.hf_dir << " ..." << std::endl;
  }
  const std::vector<SafetensorsEntry> hf = list_safetensors_dir(options.hf_dir);
  const std::string rope_changes = check_hf_config(options.hf_dir, e.model, stores_lm_head(hf));
  CpuModel cpu(e, groups);
  const std::vector<SafetensorsEntry> entries =
      match_hf_entries(hf, cpu.names, cpu.parameters, options.hf_dir);
  MasterWeightOptimizer optimizer(cpu.parameters, e.optimizer);
  {
    torch::NoGradGuard no_grad;
    // The fp32 masters get the HF values exactly; bf16 model weights are rounded from them.
    for (size_t i = 0; i < entries.size(); ++i) {
      optimizer.master_weights()[i].copy_(read_safetensors_entry(entries[i]));
    }
  }
  optimizer.sync_model_from_masters();

  const RunPaths paths = RunPaths::of(e, options.run_dir);
  const std::string& run_dir = paths.run_dir;
  if (groups.world_rank() == 0) {
    std::error_code error;
    fs::create_directories(run_dir, error);
    if (error) throw UserError(run_dir + ": cannot create the run directory");
    write_file_atomically((fs::path(run_dir) / "config.pbtxt").string(), e.resolved_text);
  }
  groups.world().barrier();
  Checkpointer checkpointer(paths.checkpoint_dir, e, groups.world());
  checkpointer.save(ResumeState{}, optimizer);
  if (groups.world_rank() == 0) {
    if (!rope_changes.empty()) {
      std::cout << "sparsering: model.rope_override: RoPE changed for this run: " << rope_changes
                << std::endl;
    }
    std::cout << "sparsering: imported " << entries.size() << " tensors from " << options.hf_dir
              << " into " << checkpointer.dir() << "/step_00000000; continue with `sparsering "
              << "train --resume auto --run-dir " << run_dir << "` and the same config"
              << std::endl;
  }
}

void export_hf(const config::Experiment& e, parallel::ProcessGroups& groups,
               const HfOptions& options) {
  CpuModel cpu(e, groups);
  MasterWeightOptimizer optimizer(cpu.parameters, e.optimizer);
  Checkpointer checkpointer(RunPaths::of(e, options.run_dir).checkpoint_dir, e, groups.world());
  const auto found = checkpointer.find(options.checkpoint, "--checkpoint");
  if (!found) throw UserError("--checkpoint auto: no checkpoint under " + checkpointer.dir());
  if (groups.world_rank() == 0) {
    std::cout << "sparsering: export-hf: loading " << *found << " ..." << std::endl;
  }
  const ResumeState state = checkpointer.load(*found, optimizer);
  if (groups.world_rank() == 0) {
    std::cout << "sparsering: export-hf: writing " << options.out_dir << " ..." << std::endl;
    std::error_code error;
    fs::create_directories(options.out_dir, error);
    if (error) throw UserError("--out " + options.out_dir + ": cannot create the directory");
    // The model's own weights (bf16 when it trains in bf16), as inference would run them. N:M
    // layers are exported strictly N:M (the masks recomputed from the fp32 masters), the weights
    // a sparse inference kernel takes.
    std::unique_ptr<NMSparsity> nm_sparsity;
    if (e.nm_sparsity.enabled) nm_sparsity = std::make_unique<NMSparsity>(e.nm_sparsity);
    NamedTensors tensors;
    for (size_t i = 0; i < cpu.names.size(); ++i) {
      at::Tensor weight = cpu.parameters[i].detach();
      if (nm_sparsity && nm_sparsity->covers(cpu.names[i])) {
        weight = nm_sparsity->strict_weight(optimizer.master_weights()[i].detach())
                     .to(weight.scalar_type());
      }
      tensors.emplace_back(hf_name(cpu.names[i]), weight);
    }
    const auto files = write_safetensors_dir(options.out_dir, tensors, options.max_shard_bytes);
    const fs::path config_path = fs::path(options.out_dir) / "config.json";
    write_file_atomically(config_path.string(), hf_config_json(e, model_dtype(e)));
    std::cout << "sparsering: exported step " << state.step << " of " << *found << " to "
              << options.out_dir << " (config.json, " << files.size() << " safetensors file(s)"
              << (nm_sparsity ? ", N:M layers strictly N:M" : "") << ")" << std::endl;
  }
  groups.world().barrier();
}

}  // namespace sparsering::trainer

// The `sparsering` command line: `sparsering <command> [options]`. Bad flags and missing files
// are UserErrors (one line, exit status 2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsering::trainer {

struct CommandLine {
  std::string command;      // train | eval | world-size | sweep | import-hf | export-hf | plan
  std::string config_path;  // empty = the embedded configs/tiny.pbtxt
  std::vector<std::string> overrides;  // --set path.to.field=value, in order
  std::string run_dir;
  std::string resume;       // --resume auto|PATH
  bool overwrite = false;   // --overwrite
  std::string sweep_path;   // sweep: --sweep FILE (configs/sweeps/*.pbtxt)
  bool print_runs = false;  // sweep: launch lines instead of the table
  bool print_name = false;  // sweep: the sweep's name only
  bool help = false;

  std::string checkpoint;  // eval: --checkpoint auto|PATH
  std::string attention;   // eval: --attention dense|sparse|both; empty = attention.kind
  int eval_sequences = 8;  // eval: --eval-sequences N
  std::string logits_out;  // eval: --logits-out FILE

  std::string hf_dir;                       // import-hf: --hf-dir DIR
  std::string out_dir;                      // export-hf: --out DIR
  int64_t max_shard_bytes = 5'000'000'000;  // export-hf: --max-shard-size SIZE

  int plan_world_size = 0;    // plan: --world-size N; 0 = dp x cp of the config
  double gpu_memory_gib = 0;  // plan: --gpu-memory GiB; 0 = no longest-context line
};

CommandLine parse_command_line(const std::vector<std::string>& arguments);

// Usage text of one command, or of the program when `command` is empty.
std::string usage(const std::string& command);

}  // namespace sparsering::trainer

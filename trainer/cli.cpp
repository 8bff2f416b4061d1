#include "trainer/cli.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "configs/user_error.h"

namespace sparsering::trainer {
namespace {

// The benchmarks are the programs under bench/ (attention_bench, host_adamw_bench, ...), run by
// launch/gpu_check.sh; the binary has no `bench` command.
const std::vector<std::string> kCommands = {"train",     "eval",      "world-size", "sweep",
                                            "import-hf", "export-hf", "plan"};

// A whole number in [1, max] for `flag`, else UserError.
int positive_int(const std::string& flag, const std::string& text, int max) {
  if (text.empty() || text.size() > 9 ||
      text.find_first_not_of("0123456789") != std::string::npos || std::stoi(text) < 1 ||
      std::stoi(text) > max) {
    throw UserError(flag + " " + text + ": must be a whole number in [1, " + std::to_string(max) +
                    "]");
  }
  return std::stoi(text);
}

const char* kProgramUsage =
    "usage: sparsering <command> [options]\n"
    "\n"
    "commands:\n"
    "  train       train a model (run under mpirun; see launch/train.sh)\n"
    "  eval        evaluate a checkpoint: held-out perplexity, needle / recall accuracy\n"
    "  world-size  print the number of ranks a config needs (dp x cp)\n"
    "  sweep       expand and check a sweep file (launch/sweep.sh runs it)\n"
    "  import-hf   Hugging Face Llama/Qwen2 safetensors -> a step-0 checkpoint to train on\n"
    "  export-hf   a checkpoint -> Hugging Face config.json + model.safetensors\n"
    "  plan        per-rank memory of a run and the longest context that fits a GPU\n"
    "\n"
    "`sparsering <command> --help` describes a command's options.\n";

const char* kConfigOptions =
    "  --config PATH       experiment file in protobuf text format (configs/*.pbtxt);\n"
    "                      default: the embedded configs/tiny.pbtxt\n"
    "  --set FIELD=VALUE   override one field, e.g. --set train.steps=50 (repeatable);\n"
    "                      the schema is configs/sparsering.proto\n";

// "5GB", "200kB", "1000": bytes in powers of 1000, as transformers' max_shard_size.
int64_t parse_byte_size(const std::string& flag, const std::string& text) {
  static const std::pair<const char*, int64_t> kUnits[] = {
      {"GB", 1'000'000'000}, {"MB", 1'000'000}, {"kB", 1'000}, {"KB", 1'000}, {"B", 1}};
  std::string digits = text;
  int64_t unit = 1;
  for (const auto& [suffix, bytes] : kUnits) {
    const std::string s = suffix;
    if (digits.size() > s.size() && digits.compare(digits.size() - s.size(), s.size(), s) == 0) {
      digits.resize(digits.size() - s.size());
      unit = bytes;
      break;
    }
  }
  if (digits.empty() || digits.size() > 12 ||
      digits.find_first_not_of("0123456789") != std::string::npos || std::stoll(digits) < 1) {
    throw UserError(flag + " " + text + ": give a whole number of bytes >= 1, e.g. 5GB or 200MB");
  }
  return std::stoll(digits) * unit;
}

}  // namespace

std::string usage(const std::string& command) {
  if (command == "train") {
    return std::string(
               "usage: mpirun -np <dp x cp> sparsering train [options]\n"
               "\n"
               "Trains the experiment and writes <run dir>/config.pbtxt (the resolved config)\n"
               "and <run dir>/metrics.jsonl (one JSON object per step).\n"
               "\n"
               "options:\n") +
           kConfigOptions +
           "  --run-dir DIR       output directory (default <train.runs_root>/<name>)\n"
           "  --resume auto|PATH  continue from the newest intact checkpoint of the run dir\n"
           "                      (auto: start fresh when there is none) or from PATH\n"
           "  --overwrite         the run dir holds a previous run: move its files aside into\n"
           "                      <run dir>/overwritten-<time>/ and start fresh (without it,\n"
           "                      or --resume, such a run dir is refused)\n"
           "  --profile           per-phase timing of profiling.num_steps steps from\n"
           "                      profiling.start_step: summary table, <run dir>/trace.json\n"
           "  --help              this text\n";
  }
  if (command == "eval") {
    return std::string(
               "usage: mpirun -np <dp x cp> sparsering eval --checkpoint auto|PATH [options]\n"
               "\n"
               "Loads a checkpoint into the model as training builds it and evaluates it without\n"
               "gradients: mean loss and perplexity on held-out sequences of data.source (from\n"
               "sequence index 2^40, which no training run reaches); for PASSKEY, passkey\n"
               "accuracy over needle depth x context length (train.sequence_length, its half and\n"
               "quarter), also drawn as <run dir>/needle_heatmap.ppm; for ASSOCIATIVE_RECALL,\n"
               "recall accuracy. Prints a table and writes <run dir>/eval.json. The model and\n"
               "dp x cp must be the checkpoint's; other fields may differ (e.g. --set\n"
               "train.sequence_length=8192 to test longer contexts, data.path for held-out\n"
               "shards).\n"
               "\n"
               "options:\n") +
           kConfigOptions +
           "  --checkpoint auto|PATH  the newest intact checkpoint of the run dir, or a step_*\n"
           "                          directory or checkpoint directory\n"
           "  --run-dir DIR           the training run's directory, where results go too\n"
           "                          (default <train.runs_root>/<name>)\n"
           "  --attention MODE        dense, sparse (the configured pattern budgets) or both,\n"
           "                          side by side on the same weights (default attention.kind)\n"
           "  --eval-sequences N      held-out sequences, and samples per needle-grid cell\n"
           "                          (default 8)\n"
           "  --logits-out FILE       also write the logits of every position of the first\n"
           "                          train.micro_batch_size held-out sequences (safetensors:\n"
           "                          logits.<mode>, tokens, document_starts)\n"
           "  --help                  this text\n";
  }
  if (command == "import-hf") {
    return std::string(
               "usage: mpirun -np <dp x cp> sparsering import-hf --hf-dir DIR [options]\n"
               "\n"
               "Reads a Hugging Face Llama / Llama 3.x or Qwen2 / Qwen2.5 model directory\n"
               "(config.json and model.safetensors, or shards with model.safetensors.index.json;\n"
               "F32/F16/BF16, one tensor at a time), checks config.json against the model config\n"
               "(a mismatch prints the --set overrides that match it; RoPE types default, linear,\n"
               "llama3 and yarn; model.rope_override=true keeps the config's RoPE for context\n"
               "extension) and every tensor's shape, and writes a step-0 checkpoint to\n"
               "<run dir>/checkpoints. `sparsering train --resume auto` with the same config and\n"
               "run dir continues training from it. Unsupported features (sliding windows, other\n"
               "RoPE types, MLP biases) are refused by name.\n"
               "\n"
               "options:\n") +
           kConfigOptions +
           "  --hf-dir DIR   the Hugging Face model directory\n"
           "  --run-dir DIR  the new run's directory (default <train.runs_root>/<name>)\n"
           "  --help         this text\n";
  }
  if (command == "export-hf") {
    return std::string(
               "usage: mpirun -np <dp x cp> sparsering export-hf --checkpoint auto|PATH --out DIR\n"
               "       [options]\n"
               "\n"
               "Writes a checkpoint's weights as a Hugging Face model (Qwen2 with\n"
               "model.attention_bias, else Llama; the resolved RoPE in config.json):\n"
               "DIR/config.json and DIR/model.safetensors, or shards of at most --max-shard-size\n"
               "with model.safetensors.index.json, in the model's dtype (train.dtype).\n"
               "\n"
               "options:\n") +
           kConfigOptions +
           "  --checkpoint auto|PATH  the newest intact checkpoint of the run dir, or a step_*\n"
           "                          directory or checkpoint directory\n"
           "  --run-dir DIR           the training run's directory\n"
           "                          (default <train.runs_root>/<name>)\n"
           "  --out DIR               where config.json and the safetensors go\n"
           "  --max-shard-size SIZE   most tensor bytes per file: bytes, or with kB, MB or GB\n"
           "                          (powers of 1000, as transformers; default 5GB)\n"
           "  --help                  this text\n";
  }
  if (command == "world-size") {
    return std::string(
               "usage: sparsering world-size [options]\n\nPrints dp x cp of the config.\n"
               "\noptions:\n") +
           kConfigOptions;
  }
  if (command == "plan") {
    return std::string(
               "usage: sparsering plan [--config C] [--world-size N] [--gpu-memory GiB]\n"
               "\n"
               "Prints the per-rank bytes of weights, gradients and optimizer state (GPU and\n"
               "host) under parallel.zero_stage and optimizer.offload, the activation bytes per\n"
               "token and the total at train.sequence_length, computed from the config without\n"
               "allocating; with --gpu-memory, the longest context that fits. `train --profile`\n"
               "measures the same breakdown.\n"
               "\n"
               "options:\n") +
           kConfigOptions +
           "  --world-size N      ranks of the job (default dp x cp of the config); N other\n"
           "                      than dp x cp sets parallel.data_parallel_size = N / cp\n"
           "  --gpu-memory GiB    memory of one GPU, e.g. 80 (H100) or 141 (H200)\n"
           "  --help              this text\n";
  }
  if (command == "sweep") {
    return "usage: sparsering sweep --sweep FILE [--print-runs | --print-name]\n"
           "\n"
           "Expands a sweep file (schema: configs/sweep.proto) into runs, loads and validates\n"
           "every run's config, and prints the runs as a table.\n"
           "\n"
           "options:\n"
           "  --sweep FILE   the sweep, e.g. configs/sweeps/tiny_layouts.pbtxt\n"
           "  --print-runs   one line per run for launch/sweep.sh, tab-separated:\n"
           "                 run name, world size, base config, then its --set overrides\n"
           "  --print-name   the sweep's name only (its runs go to runs/<name>/)\n"
           "  --help         this text\n";
  }
  return kProgramUsage;
}

CommandLine parse_command_line(const std::vector<std::string>& arguments) {
  CommandLine line;
  if (arguments.empty()) {
    throw UserError("missing command; run `sparsering --help` for the list");
  }
  if (arguments[0] == "--help" || arguments[0] == "-h" || arguments[0] == "help") {
    line.help = true;
    return line;
  }
  line.command = arguments[0];
  if (std::find(kCommands.begin(), kCommands.end(), line.command) == kCommands.end()) {
    throw UserError("unknown command '" + line.command + "'; run `sparsering --help` for the list");
  }
  auto value_of = [&](size_t& i) -> const std::string& {
    if (i + 1 >= arguments.size()) {
      throw UserError(arguments[i] + " needs a value; see `sparsering " + line.command +
                      " --help`");
    }
    return arguments[++i];
  };
  for (size_t i = 1; i < arguments.size(); ++i) {
    const std::string& flag = arguments[i];
    if (flag == "--help" || flag == "-h") {
      line.help = true;
    } else if (flag == "--config" && line.command != "sweep") {
      line.config_path = value_of(i);
      if (!std::filesystem::is_regular_file(line.config_path)) {
        throw UserError(line.config_path + ": config file not found; check the path");
      }
    } else if (flag == "--set" && line.command != "sweep") {
      line.overrides.push_back(value_of(i));
    } else if (flag == "--run-dir" &&
               (line.command == "train" || line.command == "eval" || line.command == "import-hf" ||
                line.command == "export-hf")) {
      line.run_dir = value_of(i);
    } else if (flag == "--resume" && line.command == "train") {
      line.resume = value_of(i);
    } else if (flag == "--overwrite" && line.command == "train") {
      line.overwrite = true;
    } else if (flag == "--checkpoint" && (line.command == "eval" || line.command == "export-hf")) {
      line.checkpoint = value_of(i);
    } else if (flag == "--attention" && line.command == "eval") {
      line.attention = value_of(i);
      if (line.attention != "dense" && line.attention != "sparse" && line.attention != "both") {
        throw UserError("--attention " + line.attention + ": must be dense, sparse or both");
      }
    } else if (flag == "--eval-sequences" && line.command == "eval") {
      line.eval_sequences = positive_int(flag, value_of(i), 1 << 20);
    } else if (flag == "--logits-out" && line.command == "eval") {
      line.logits_out = value_of(i);
    } else if (flag == "--max-shard-size" && line.command == "export-hf") {
      line.max_shard_bytes = parse_byte_size(flag, value_of(i));
    } else if (flag == "--hf-dir" && line.command == "import-hf") {
      line.hf_dir = value_of(i);
    } else if (flag == "--out" && line.command == "export-hf") {
      line.out_dir = value_of(i);
    } else if (flag == "--profile" && line.command == "train") {
      line.overrides.push_back("profiling.enabled=true");
    } else if (flag == "--world-size" && line.command == "plan") {
      line.plan_world_size = positive_int(flag, value_of(i), 1 << 20);
    } else if (flag == "--gpu-memory" && line.command == "plan") {
      line.gpu_memory_gib = positive_int(flag, value_of(i), 1 << 16);
    } else if (flag == "--sweep" && line.command == "sweep") {
      line.sweep_path = value_of(i);
      if (!std::filesystem::is_regular_file(line.sweep_path)) {
        throw UserError(line.sweep_path + ": sweep file not found; check the path");
      }
    } else if (flag == "--print-runs" && line.command == "sweep") {
      line.print_runs = true;
    } else if (flag == "--print-name" && line.command == "sweep") {
      line.print_name = true;
    } else {
      throw UserError("unknown option '" + flag + "' for `sparsering " + line.command +
                      "`; see `sparsering " + line.command + " --help`");
    }
  }
  if (line.command == "eval" && line.checkpoint.empty() && !line.help) {
    throw UserError("`sparsering eval` needs --checkpoint auto|PATH; see `sparsering eval --help`");
  }
  if (line.command == "import-hf" && line.hf_dir.empty() && !line.help) {
    throw UserError("`sparsering import-hf` needs --hf-dir DIR; see `sparsering import-hf --help`");
  }
  if (line.command == "export-hf" && (line.checkpoint.empty() || line.out_dir.empty()) &&
      !line.help) {
    throw UserError(
        "`sparsering export-hf` needs --checkpoint auto|PATH and --out DIR; see `sparsering "
        "export-hf --help`");
  }
  if (line.command == "sweep" && line.sweep_path.empty() && !line.help) {
    throw UserError("`sparsering sweep` needs --sweep FILE; see `sparsering sweep --help`");
  }
  return line;
}

}  // namespace sparsering::trainer

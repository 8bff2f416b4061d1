#include "trainer/cli.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <utility>

#include "configs/user_error.h"

namespace sparsering::trainer {
namespace {

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

// One command: its usage line and what it does (the options come from kOptions).
struct CommandSpec {
  const char* name;
  const char* summary;      // one line in `sparsering --help`
  const char* usage;        // "usage: ..." line(s)
  const char* description;  // paragraph(s) after the usage line; may be empty
};

const std::vector<CommandSpec> kCommandSpecs = {
    {"train", "train a model (run under mpirun; see launch/train.sh)",
     "usage: mpirun -np <dp x cp> sparsering train [options]",
     "Trains the experiment and writes <run dir>/config.pbtxt (the resolved config)\n"
     "and <run dir>/metrics.jsonl (one JSON object per step).\n"},
    {"eval", "evaluate a checkpoint: held-out perplexity, needle / recall accuracy",
     "usage: mpirun -np <dp x cp> sparsering eval --checkpoint auto|PATH [options]",
     "Loads a checkpoint into the model as training builds it and evaluates it without\n"
     "gradients: mean loss and perplexity on held-out sequences of data.source (from\n"
     "sequence index 2^40, which no training run reaches); for PASSKEY, passkey\n"
     "accuracy over needle depth x context length (train.sequence_length, its half and\n"
     "quarter), also drawn as <run dir>/needle_heatmap.ppm; for ASSOCIATIVE_RECALL,\n"
     "recall accuracy. Prints a table and writes <run dir>/eval.json. The model and\n"
     "dp x cp must be the checkpoint's; other fields may differ (e.g. --set\n"
     "train.sequence_length=8192 to test longer contexts, data.path for held-out\n"
     "shards).\n"},
    {"world-size", "print the number of ranks a config needs (dp x cp)",
     "usage: sparsering world-size [options]", "Prints dp x cp of the config.\n"},
    {"sweep", "expand and check a sweep file (launch/sweep.sh runs it)",
     "usage: sparsering sweep --sweep FILE [--print-runs | --print-name]",
     "Expands a sweep file (schema: configs/sweep.proto) into runs, loads and validates\n"
     "every run's config, and prints the runs as a table.\n"},
    {"import-hf", "Hugging Face Llama/Qwen2 safetensors -> a step-0 checkpoint to train on",
     "usage: mpirun -np <dp x cp> sparsering import-hf --hf-dir DIR [options]",
     "Reads a Hugging Face Llama / Llama 3.x or Qwen2 / Qwen2.5 model directory\n"
     "(config.json and model.safetensors, or shards with model.safetensors.index.json;\n"
     "F32/F16/BF16, one tensor at a time), checks config.json against the model config\n"
     "(a mismatch prints the --set overrides that match it; RoPE types default, linear,\n"
     "llama3 and yarn; model.rope_override=true keeps the config's RoPE for context\n"
     "extension) and every tensor's shape, and writes a step-0 checkpoint to\n"
     "<run dir>/checkpoints. `sparsering train --resume auto` with the same config and\n"
     "run dir continues training from it. Unsupported features (sliding windows, other\n"
     "RoPE types, MLP biases) are refused by name.\n"},
    {"export-hf", "a checkpoint -> Hugging Face config.json + model.safetensors",
     "usage: mpirun -np <dp x cp> sparsering export-hf --checkpoint auto|PATH --out DIR\n"
     "       [options]",
     "Writes a checkpoint's weights as a Hugging Face model (Qwen2 with\n"
     "model.attention_bias, else Llama; the resolved RoPE in config.json):\n"
     "DIR/config.json and DIR/model.safetensors, or shards of at most --max-shard-size\n"
     "with model.safetensors.index.json, in the model's dtype (train.dtype).\n"},
    {"plan", "per-rank memory of a run and the longest context that fits a GPU",
     "usage: sparsering plan [--config C] [--world-size N] [--gpu-memory GiB]",
     "Prints the per-rank bytes of weights, gradients and optimizer state (GPU and\n"
     "host) under parallel.zero_stage and optimizer.offload, the activation bytes per\n"
     "token and the total at train.sequence_length, computed from the config without\n"
     "allocating; with --gpu-memory, the longest context that fits. `train --profile`\n"
     "measures the same breakdown.\n"},
};

using Apply = std::function<void(CommandLine&, const std::string& flag, const std::string& value)>;

// An option whose value is stored as given.
Apply store(std::string CommandLine::*field) {
  return [field](CommandLine& line, const std::string&, const std::string& value) {
    line.*field = value;
  };
}

// A path to an existing file (`what`: "config", "sweep").
Apply store_file(std::string CommandLine::*field, const char* what) {
  return [field, what](CommandLine& line, const std::string&, const std::string& value) {
    if (!std::filesystem::is_regular_file(value)) {
      throw UserError(value + ": " + what + " file not found; check the path");
    }
    line.*field = value;
  };
}

// A switch.
Apply enable(bool CommandLine::*field) {
  return [field](CommandLine& line, const std::string&, const std::string&) { line.*field = true; };
}

// One option: the commands that take it, its help and what it sets. Parsing and help text both
// come from this table, so an option cannot be documented without being accepted or vice versa.
struct OptionSpec {
  const char* flag;
  const char* value;  // the value's name in the help; nullptr for a switch
  std::vector<std::string> commands;
  const char* help;  // lines after the first are indented under it
  Apply apply;
};

const std::vector<std::string> kConfigCommands = {"train",     "eval",      "world-size",
                                                  "import-hf", "export-hf", "plan"};

const std::vector<OptionSpec>& options() {
  static const std::vector<OptionSpec> table = {
      {"--config", "PATH", kConfigCommands,
       "experiment file in protobuf text format (configs/*.pbtxt);\n"
       "default: the embedded configs/tiny.pbtxt",
       store_file(&CommandLine::config_path, "config")},
      {"--set", "FIELD=VALUE", kConfigCommands,
       "override one field, e.g. --set train.steps=50 (repeatable);\n"
       "the schema is configs/sparsering.proto",
       [](CommandLine& line, const std::string&, const std::string& value) {
         line.overrides.push_back(value);
       }},
      {"--run-dir",
       "DIR",
       {"train", "eval", "import-hf", "export-hf"},
       "the run's directory: outputs, checkpoints, results\n"
       "(default <train.runs_root>/<name>)",
       store(&CommandLine::run_dir)},
      {"--resume",
       "auto|PATH",
       {"train"},
       "continue from the newest intact checkpoint of the run dir\n"
       "(auto: start fresh when there is none) or from PATH",
       store(&CommandLine::resume)},
      {"--overwrite",
       nullptr,
       {"train"},
       "the run dir holds a previous run: move its files aside into\n"
       "<run dir>/overwritten-<time>/ and start fresh (without it,\n"
       "or --resume, such a run dir is refused)",
       enable(&CommandLine::overwrite)},
      {"--profile",
       nullptr,
       {"train"},
       "per-phase timing of profiling.num_steps steps from\n"
       "profiling.start_step: summary table, <run dir>/trace.json",
       [](CommandLine& line, const std::string&, const std::string&) {
         line.overrides.push_back("profiling.enabled=true");
       }},
      {"--checkpoint",
       "auto|PATH",
       {"eval", "export-hf"},
       "the newest intact checkpoint of the run dir, or a step_*\n"
       "directory or checkpoint directory",
       store(&CommandLine::checkpoint)},
      {"--attention",
       "MODE",
       {"eval"},
       "dense, sparse (the configured pattern budgets) or both,\n"
       "side by side on the same weights (default attention.kind)",
       [](CommandLine& line, const std::string&, const std::string& value) {
         if (value != "dense" && value != "sparse" && value != "both") {
           throw UserError("--attention " + value + ": must be dense, sparse or both");
         }
         line.attention = value;
       }},
      {"--eval-sequences",
       "N",
       {"eval"},
       "held-out sequences, and samples per needle-grid cell\n(default 8)",
       [](CommandLine& line, const std::string& flag, const std::string& value) {
         line.eval_sequences = positive_int(flag, value, 1 << 20);
       }},
      {"--logits-out",
       "FILE",
       {"eval"},
       "also write the logits of every position of the first\n"
       "train.micro_batch_size held-out sequences (safetensors:\n"
       "logits.<mode>, tokens, document_starts)",
       store(&CommandLine::logits_out)},
      {"--hf-dir",
       "DIR",
       {"import-hf"},
       "the Hugging Face model directory",
       store(&CommandLine::hf_dir)},
      {"--out",
       "DIR",
       {"export-hf"},
       "where config.json and the safetensors go",
       store(&CommandLine::out_dir)},
      {"--max-shard-size",
       "SIZE",
       {"export-hf"},
       "most tensor bytes per file: bytes, or with kB, MB or GB\n"
       "(powers of 1000, as transformers; default 5GB)",
       [](CommandLine& line, const std::string& flag, const std::string& value) {
         line.max_shard_bytes = parse_byte_size(flag, value);
       }},
      {"--world-size",
       "N",
       {"plan"},
       "ranks of the job (default dp x cp of the config); N other\n"
       "than dp x cp sets parallel.data_parallel_size = N / cp",
       [](CommandLine& line, const std::string& flag, const std::string& value) {
         line.plan_world_size = positive_int(flag, value, 1 << 20);
       }},
      {"--gpu-memory",
       "GiB",
       {"plan"},
       "memory of one GPU, e.g. 80 (H100) or 141 (H200)",
       [](CommandLine& line, const std::string& flag, const std::string& value) {
         line.gpu_memory_gib = positive_int(flag, value, 1 << 16);
       }},
      {"--sweep",
       "FILE",
       {"sweep"},
       "the sweep, e.g. configs/sweeps/tiny_layouts.pbtxt",
       store_file(&CommandLine::sweep_path, "sweep")},
      {"--print-runs",
       nullptr,
       {"sweep"},
       "one line per run for launch/sweep.sh, tab-separated:\n"
       "run name, world size, base config, then its --set overrides",
       enable(&CommandLine::print_runs)},
      {"--print-name",
       nullptr,
       {"sweep"},
       "the sweep's name only (its runs go to runs/<name>/)",
       enable(&CommandLine::print_name)},
  };
  return table;
}

bool takes(const OptionSpec& option, const std::string& command) {
  return std::find(option.commands.begin(), option.commands.end(), command) !=
         option.commands.end();
}

const CommandSpec* find_command(const std::string& name) {
  for (const CommandSpec& spec : kCommandSpecs) {
    if (name == spec.name) return &spec;
  }
  return nullptr;
}

// The options of `command` as aligned "  --flag VALUE   help" rows, --help last.
std::string option_rows(const std::string& command) {
  std::vector<std::pair<std::string, std::string>> rows;
  for (const OptionSpec& option : options()) {
    if (!takes(option, command)) continue;
    rows.emplace_back(
        std::string(option.flag) + (option.value ? std::string(" ") + option.value : std::string()),
        option.help);
  }
  rows.emplace_back("--help", "this text");
  size_t width = 0;
  for (const auto& row : rows) width = std::max(width, row.first.size());
  const std::string indent(2 + width + 3, ' ');
  std::string text;
  for (const auto& [name, help] : rows) {
    text += "  " + name + std::string(width + 3 - name.size(), ' ');
    size_t begin = 0;
    for (size_t end = help.find('\n');; end = help.find('\n', begin)) {
      text += (begin == 0 ? "" : indent) + help.substr(begin, end - begin) + "\n";
      if (end == std::string::npos) break;
      begin = end + 1;
    }
  }
  return text;
}

std::string program_usage() {
  std::string text = "usage: sparsering <command> [options]\n\ncommands:\n";
  for (const CommandSpec& spec : kCommandSpecs) {
    const std::string name = spec.name;
    text += "  " + name + std::string(12 - name.size(), ' ') + spec.summary + "\n";
  }
  return text + "\n`sparsering <command> --help` describes a command's options.\n";
}

// Options a command cannot run without.
void check_required(const CommandLine& line) {
  if (line.help) return;
  if (line.command == "eval" && line.checkpoint.empty()) {
    throw UserError("`sparsering eval` needs --checkpoint auto|PATH; see `sparsering eval --help`");
  }
  if (line.command == "import-hf" && line.hf_dir.empty()) {
    throw UserError("`sparsering import-hf` needs --hf-dir DIR; see `sparsering import-hf --help`");
  }
  if (line.command == "export-hf" && (line.checkpoint.empty() || line.out_dir.empty())) {
    throw UserError(
        "`sparsering export-hf` needs --checkpoint auto|PATH and --out DIR; see `sparsering "
        "export-hf --help`");
  }
  if (line.command == "sweep" && line.sweep_path.empty()) {
    throw UserError("`sparsering sweep` needs --sweep FILE; see `sparsering sweep --help`");
  }
}

}  // namespace

std::string usage(const std::string& command) {
  const CommandSpec* spec = find_command(command);
  if (spec == nullptr) return program_usage();
  std::string text = std::string(spec->usage) + "\n\n";
  if (*spec->description) text += std::string(spec->description) + "\n";
  return text + "options:\n" + option_rows(command);
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
  if (find_command(line.command) == nullptr) {
    throw UserError("unknown command '" + line.command + "'; run `sparsering --help` for the list");
  }
  for (size_t i = 1; i < arguments.size(); ++i) {
    const std::string& flag = arguments[i];
    if (flag == "--help" || flag == "-h") {
      line.help = true;
      continue;
    }
    const auto& table = options();
    const auto option = std::find_if(table.begin(), table.end(), [&](const OptionSpec& o) {
      return flag == o.flag && takes(o, line.command);
    });
    if (option == table.end()) {
      throw UserError("unknown option '" + flag + "' for `sparsering " + line.command +
                      "`; see `sparsering " + line.command + " --help`");
    }
    std::string value;
    if (option->value != nullptr) {
      if (i + 1 >= arguments.size()) {
        throw UserError(flag + " needs a value; see `sparsering " + line.command + " --help`");
      }
      value = arguments[++i];
    }
    option->apply(line, flag, value);
  }
  check_required(line);
  return line;
}

}  // namespace sparsering::trainer

// Plain C++ view of a resolved experiment (configs/sparsering.proto is the documented schema).
// The protobuf-generated code stays inside the config library because torch bundles an older
// protobuf's headers (docs/build.md, "The protobuf and torch header clash"); everything else in
// SparseRing reads these structs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsering::config {

enum class RopeType { kDefault, kLinear, kLlama3, kYarn };

struct ModelConfig {
  int num_layers, hidden_size, num_heads, num_kv_heads, ffn_hidden_size, vocab_size;
  double rope_theta, rope_scaling_factor;
  int max_context;
  bool tie_embeddings;
  double rms_norm_eps, init_std;
  bool activation_checkpointing;
  int loss_chunk_tokens;
  RopeType rope_type;
  int rope_original_max_context;                                 // 0 = max_context
  double rope_low_freq_factor, rope_high_freq_factor;            // LLAMA3
  double rope_beta_fast, rope_beta_slow, rope_attention_factor;  // YARN (attention 0 = derived)
  bool rope_truncate;                                            // YARN
  bool attention_bias;                                           // q/k/v biases (Qwen2)
  bool rope_override;  // import-hf: these rope_* fields replace config.json's
  int head_dim() const { return hidden_size / num_heads; }
};

enum class AttentionKind { kDense, kSparse };

struct AttentionConfig {
  AttentionKind kind;
  int block_size;
  int vertical_budget;
  double vertical_fraction;
  int slash_budget;
  double slash_fraction;
  int sink_tokens, local_tokens, estimation_queries, reestimate_every, dense_warmup_steps;
  bool deterministic_backward;
  bool cudnn_dense;  // DenseKernel CUDNN: plain-mask ring steps on GPUs go to cuDNN
};

enum class LayoutKind { kContiguous, kZigzag, kBalanced };

struct ParallelConfig {
  int data_parallel_size, context_parallel_size, intra_node_ring_size;
  LayoutKind layout;
  int grad_bucket_mb, collective_timeout_s;
  int zero_stage;
  int head_parallel_size;
};

enum class NMMode { kSte, kSrSte, kMdgfLinear, kMdgfExponential, kSdgfStepwise, kSdgfGeometric };
enum class NMGradientSemantics { kStraightThrough, kDecayed };

struct NMSparsityConfig {
  bool enabled;
  int n, m;
  std::vector<std::string> layers;
  NMMode mode;
  NMGradientSemantics gradient_semantics;
  double sr_ste_lambda, kappa;
  int sdgf_interval;
  double sdgf_step, sdgf_factor;
  int hard_prune_step;
};

struct OptimizerConfig {
  double lr, beta1, beta2, eps, weight_decay, grad_clip;
  int grad_accumulation_steps;
  bool offload_to_cpu;
};

enum class ScheduleKind { kCosine, kLinear, kConstant };

struct ScheduleConfig {
  ScheduleKind kind;
  int warmup_steps;
  double min_lr_ratio;
};

enum class DataSource { kSyntheticCopy, kPasskey, kAssociativeRecall, kTokenShards };

struct DataConfig {
  DataSource source;
  std::string path;
  bool document_mask;
  int copy_period;
  bool shuffle;
  int passkey_digits;
  double needle_depth;
  int recall_pairs, recall_queries;
};

struct CheckpointConfig {
  int every_steps, keep_last;
  std::string dir;
};

struct LoggingConfig {
  int log_every;
  bool tensorboard;
};

struct ProfilingConfig {
  bool enabled;
  int start_step, num_steps;
};

enum class Device { kAuto, kCpu, kCuda };
enum class DType { kFloat32, kBFloat16 };
enum class NanPolicy { kStop, kSkipStep };

struct TrainConfig {
  int steps, sequence_length, micro_batch_size;
  uint64_t seed;
  Device device;
  DType dtype;
  std::string runs_root;
  NanPolicy nan_policy;
};

struct Experiment {
  std::string name;
  ModelConfig model;
  AttentionConfig attention;
  ParallelConfig parallel;
  NMSparsityConfig nm_sparsity;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  DataConfig data;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  ProfilingConfig profiling;
  TrainConfig train;
  std::string resolved_text;  // the fully resolved config in text format, for the run dir
};

// The embedded default experiment (configs/tiny.pbtxt compiled into the binary).
const char* embedded_tiny_config();

// Parses text-format `text` (named `source` in errors), applies `overrides` ("a.b.c=value"),
// validates, and returns the resolved experiment. Throws UserError naming the input, the field
// and the rule it breaks.
Experiment load_experiment(const std::string& text, const std::string& source,
                           const std::vector<std::string>& overrides);

// Reads `path` (throws UserError if it cannot) and calls load_experiment.
Experiment load_experiment_file(const std::string& path, const std::vector<std::string>& overrides);

// Validation rules that depend on the world (number of MPI ranks): world == dp x cp.
void validate_world(const Experiment& experiment, int world_size);

}  // namespace sparsering::config

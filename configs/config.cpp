// Loads an experiment: text format -> overrides -> validation -> plain structs.
#include "configs/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <utility>

#include "configs/field_limits.h"
#include "configs/first_error_collector.h"
#include "configs/sparsering.pb.h"
#include "configs/user_error.h"

namespace sparsering::config {
namespace {

namespace pb = google::protobuf;

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, separator)) parts.push_back(part);
  return parts;
}

// Merges "field: value" into `message`, quoting string values the user left bare.
void merge_field_value(pb::Message* message, const pb::FieldDescriptor* field,
                       const std::string& value, const std::string& override_text) {
  std::string literal = value;
  if (field->type() == pb::FieldDescriptor::TYPE_STRING && (literal.empty() || literal[0] != '"')) {
    literal = "\"" + literal + "\"";
  }
  FirstErrorCollector errors;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.MergeFromString(field->name() + ": " + literal, message)) {
    throw UserError("--set " + override_text + ": bad value for " + field->full_name() + " (" +
                    errors.error() + "); give a " + field->type_name() + " value");
  }
}

// "a.b.c=value": walks the message fields a.b and sets c. A repeated field takes a
// comma-separated list that replaces its contents.
void apply_override(const std::string& override_text, pb::Message* root) {
  const auto equals = override_text.find('=');
  if (equals == std::string::npos || equals == 0) {
    throw UserError("--set " + override_text + ": expected path.to.field=value");
  }
  const std::string path = override_text.substr(0, equals);
  const std::string value = override_text.substr(equals + 1);
  const std::vector<std::string> names = split(path, '.');
  pb::Message* message = root;
  for (size_t i = 0; i < names.size(); ++i) {
    const pb::FieldDescriptor* field = message->GetDescriptor()->FindFieldByName(names[i]);
    if (field == nullptr) {
      throw UserError("--set " + override_text + ": " + message->GetDescriptor()->full_name() +
                      " has no field '" + names[i] + "'; see configs/sparsering.proto");
    }
    const bool last = i + 1 == names.size();
    if (!last) {
      if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || field->is_repeated()) {
        throw UserError("--set " + override_text + ": '" + names[i] +
                        "' is not a message, so it cannot have sub-fields");
      }
      message = message->GetReflection()->MutableMessage(message, field);
      continue;
    }
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      throw UserError("--set " + override_text + ": '" + path +
                      "' is a message; set one of its fields (path.field=value)");
    }
    if (field->is_repeated()) {
      message->GetReflection()->ClearField(message, field);
      for (const std::string& item : split(value, ',')) {
        merge_field_value(message, field, item, override_text);
      }
    } else {
      merge_field_value(message, field, value, override_text);
    }
  }
}

// A validation failure names the input, the field, its value and the rule.
class Validator {
 public:
  explicit Validator(std::string source) : source_(std::move(source)) {}

  template <typename T>
  void require(bool ok, const std::string& field, const T& value, const std::string& rule) const {
    if (ok) return;
    std::ostringstream message;
    message << source_ << ": " << field << " = " << value << ": " << rule;
    throw UserError(message.str());
  }

 private:
  std::string source_;
};

void validate(const proto::Experiment& e, const std::string& source) {
  const Validator v(source);
  // Finite reals, integers <= 2^30, bounded strings: every field, then the products of sizes, so
  // the rules below compute without overflow.
  validate_every_field(e, source);
  validate_size_products(e, source);
  const auto& model = e.model();
  v.require(!e.name().empty() && e.name().find('/') == std::string::npos && e.name() != "." &&
                e.name() != ".." && e.name().size() <= 255,
            "name", e.name(),
            "must be a directory name (not empty, '.' or '..', no '/', at most 255 bytes): the "
            "run directory is <train.runs_root>/<name>");
  v.require(model.num_layers() > 0, "model.num_layers", model.num_layers(), "must be > 0");
  v.require(model.num_heads() > 0, "model.num_heads", model.num_heads(), "must be > 0");
  v.require(
      model.hidden_size() > 0 && model.hidden_size() % model.num_heads() == 0, "model.hidden_size",
      model.hidden_size(),
      "must be a positive multiple of model.num_heads (" + std::to_string(model.num_heads()) + ")");
  v.require((model.hidden_size() / model.num_heads()) % 2 == 0, "model.hidden_size",
            model.hidden_size(),
            "model.hidden_size / model.num_heads (head dim) must be even for RoPE");
  v.require(model.num_kv_heads() > 0 && model.num_heads() % model.num_kv_heads() == 0,
            "model.num_kv_heads", model.num_kv_heads(), "must divide model.num_heads");
  v.require(model.ffn_hidden_size() > 0, "model.ffn_hidden_size", model.ffn_hidden_size(),
            "must be > 0");
  v.require(model.vocab_size() > 1, "model.vocab_size", model.vocab_size(), "must be > 1");
  v.require(model.rope_theta() > 0, "model.rope_theta", model.rope_theta(), "must be > 0");
  v.require(model.max_context() >= 1, "model.max_context", model.max_context(), "must be >= 1");
  v.require(model.rope_scaling_factor() >= 1, "model.rope_scaling_factor",
            model.rope_scaling_factor(), "must be >= 1 (1 = no scaling)");
  v.require(model.rope_type() != proto::Model::DEFAULT || model.rope_scaling_factor() == 1,
            "model.rope_scaling_factor", model.rope_scaling_factor(),
            "scales nothing with model.rope_type DEFAULT; set model.rope_type=LINEAR (positions / "
            "factor), LLAMA3 or YARN, or the factor to 1");
  v.require(model.rope_original_max_context() >= 0, "model.rope_original_max_context",
            model.rope_original_max_context(), "must be >= 0 (0 = derived)");
  v.require(model.rope_type() != proto::Model::LLAMA3 ||
                model.rope_high_freq_factor() > model.rope_low_freq_factor(),
            "model.rope_high_freq_factor", model.rope_high_freq_factor(),
            "must be > model.rope_low_freq_factor for LLAMA3");
  v.require(model.rope_beta_fast() > 0, "model.rope_beta_fast", model.rope_beta_fast(),
            "must be > 0 (YaRN's beta_fast)");
  v.require(model.rope_beta_slow() > 0, "model.rope_beta_slow", model.rope_beta_slow(),
            "must be > 0 (YaRN's beta_slow)");
  v.require(model.rope_attention_factor() >= 0, "model.rope_attention_factor",
            model.rope_attention_factor(), "must be >= 0 (0 = 0.1 ln(factor) + 1)");
  v.require(model.rms_norm_eps() > 0 && model.rms_norm_eps() <= 1, "model.rms_norm_eps",
            model.rms_norm_eps(), "must be in (0, 1]");
  // Larger weights overflow in the first forward pass.
  v.require(model.init_std() > 0 && model.init_std() <= 1, "model.init_std", model.init_std(),
            "must be in (0, 1]");
  v.require(model.loss_chunk_tokens() >= 0, "model.loss_chunk_tokens", model.loss_chunk_tokens(),
            "must be >= 0 (0 = whole shard)");

  const auto& attention = e.attention();
  v.require(attention.block_size() == 64 || attention.block_size() == 128, "attention.block_size",
            attention.block_size(), "must be 64 or 128");
  v.require(attention.vertical_budget() >= 0, "attention.vertical_budget",
            attention.vertical_budget(), "must be >= 0");
  v.require(attention.slash_budget() >= 0, "attention.slash_budget", attention.slash_budget(),
            "must be >= 0");
  v.require(attention.vertical_fraction() >= 0 && attention.vertical_fraction() <= 1,
            "attention.vertical_fraction", attention.vertical_fraction(), "must be in [0, 1]");
  v.require(attention.slash_fraction() >= 0 && attention.slash_fraction() <= 1,
            "attention.slash_fraction", attention.slash_fraction(), "must be in [0, 1]");
  v.require(attention.sink_tokens() >= 0, "attention.sink_tokens", attention.sink_tokens(),
            "must be >= 0");
  v.require(attention.local_tokens() >= 1, "attention.local_tokens", attention.local_tokens(),
            "must be >= 1 (the main diagonal is always kept)");
  v.require(attention.estimation_queries() > 0 &&
                attention.estimation_queries() <= e.train().sequence_length(),
            "attention.estimation_queries", attention.estimation_queries(),
            "must be in [1, train.sequence_length]");
  v.require(attention.reestimate_every() >= 1, "attention.reestimate_every",
            attention.reestimate_every(), "must be >= 1");
  v.require(attention.dense_warmup_steps() >= 0, "attention.dense_warmup_steps",
            attention.dense_warmup_steps(), "must be >= 0");

  const auto& parallel = e.parallel();
  const int cp = parallel.context_parallel_size();
  v.require(parallel.data_parallel_size() >= 1, "parallel.data_parallel_size",
            parallel.data_parallel_size(), "must be >= 1");
  v.require(cp >= 1, "parallel.context_parallel_size", cp, "must be >= 1");
  const int u = parallel.head_parallel_size();
  v.require(u >= 1 && cp % u == 0 && e.model().num_heads() % u == 0, "parallel.head_parallel_size",
            u,
            "must divide parallel.context_parallel_size (" + std::to_string(cp) +
                ") and model.num_heads (" + std::to_string(e.model().num_heads()) + ")");
  const int ring = u >= 1 && cp % u == 0 ? cp / u : cp;
  v.require(parallel.intra_node_ring_size() == 0 || (parallel.intra_node_ring_size() >= 1 &&
                                                     ring % parallel.intra_node_ring_size() == 0),
            "parallel.intra_node_ring_size", parallel.intra_node_ring_size(),
            "must be 0 (flat ring) or divide the ring's ranks, parallel.context_parallel_size / "
            "parallel.head_parallel_size (" +
                std::to_string(ring) + ")");
  v.require(parallel.grad_bucket_mb() >= 1, "parallel.grad_bucket_mb", parallel.grad_bucket_mb(),
            "must be >= 1");
  v.require(parallel.collective_timeout_s() >= 1, "parallel.collective_timeout_s",
            parallel.collective_timeout_s(), "must be >= 1");
  v.require(parallel.zero_stage() >= 0 && parallel.zero_stage() <= 3, "parallel.zero_stage",
            parallel.zero_stage(), "must be 0, 1, 2 or 3");
  v.require(parallel.zero_stage() < 3 || model.activation_checkpointing(), "parallel.zero_stage",
            parallel.zero_stage(),
            "3 gathers each layer again in the backward to recompute it; set "
            "model.activation_checkpointing=true");
  v.require(e.optimizer().offload() == proto::Optimizer::NONE || parallel.zero_stage() >= 1,
            "optimizer.offload", "CPU",
            "needs parallel.zero_stage >= 1 (on one rank stage 1 shards nothing, so offload costs "
            "no memory there)");

  const auto& train = e.train();
  const int64_t chunk = int64_t{2} * cp * attention.block_size();
  v.require(train.sequence_length() > 0 && train.sequence_length() % chunk == 0,
            "train.sequence_length", train.sequence_length(),
            "must be a multiple of 2 x parallel.context_parallel_size x attention.block_size (" +
                std::to_string(chunk) + ")");
  v.require(train.sequence_length() <= model.max_context(), "train.sequence_length",
            train.sequence_length(),
            "must be <= model.max_context (" + std::to_string(model.max_context()) + ")");
  v.require(train.steps() > 0, "train.steps", train.steps(), "must be > 0");
  v.require(train.micro_batch_size() >= 1, "train.micro_batch_size", train.micro_batch_size(),
            "must be >= 1");

  const auto& nm = e.nm_sparsity();
  v.require(nm.m() >= 2 && nm.n() >= 1 && nm.n() < nm.m(), "nm_sparsity.n", nm.n(),
            "needs 1 <= nm_sparsity.n < nm_sparsity.m (m = " + std::to_string(nm.m()) + ")");
  v.require(model.hidden_size() % nm.m() == 0 && model.ffn_hidden_size() % nm.m() == 0,
            "nm_sparsity.m", nm.m(), "must divide model.hidden_size and model.ffn_hidden_size");
  for (const std::string& layer : nm.layers()) {
    static const std::vector<std::string> kLayers = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                     "gate_proj", "up_proj", "down_proj"};
    v.require(std::find(kLayers.begin(), kLayers.end(), layer) != kLayers.end(),
              "nm_sparsity.layers", layer,
              "unknown layer; use q_proj k_proj v_proj o_proj gate_proj up_proj down_proj");
  }
  v.require(!nm.enabled() || nm.layers_size() > 0, "nm_sparsity.layers", "(none)",
            "list at least one layer when nm_sparsity.enabled (e.g. up_proj,gate_proj,down_proj)");
  v.require(nm.sr_ste_lambda() >= 0 && nm.sr_ste_lambda() <= 1, "nm_sparsity.sr_ste_lambda",
            nm.sr_ste_lambda(), "must be in [0, 1]");
  v.require(nm.kappa() >= 0, "nm_sparsity.kappa", nm.kappa(), "must be >= 0");
  v.require(nm.sdgf_interval() >= 1, "nm_sparsity.sdgf_interval", nm.sdgf_interval(),
            "must be >= 1");
  v.require(nm.sdgf_step() > 0 && nm.sdgf_step() <= 1, "nm_sparsity.sdgf_step", nm.sdgf_step(),
            "must be in (0, 1]");
  v.require(nm.sdgf_factor() > 0 && nm.sdgf_factor() <= 1, "nm_sparsity.sdgf_factor",
            nm.sdgf_factor(), "must be in (0, 1]");
  v.require(nm.hard_prune_step() >= -1, "nm_sparsity.hard_prune_step", nm.hard_prune_step(),
            "must be >= 0, or -1 for never");

  const auto& optimizer = e.optimizer();
  // AdamW moves a weight by about lr per step: beyond 1 every step overshoots.
  v.require(optimizer.lr() > 0 && optimizer.lr() <= 1, "optimizer.lr", optimizer.lr(),
            "must be in (0, 1]");
  v.require(optimizer.beta1() >= 0 && optimizer.beta1() < 1, "optimizer.beta1", optimizer.beta1(),
            "must be in [0, 1)");
  v.require(optimizer.beta2() >= 0 && optimizer.beta2() < 1, "optimizer.beta2", optimizer.beta2(),
            "must be in [0, 1)");
  v.require(optimizer.eps() > 0 && optimizer.eps() <= 1, "optimizer.eps", optimizer.eps(),
            "must be in (0, 1]");
  // Decoupled decay multiplies weights by 1 - lr x weight_decay each step: it must stay >= 0.
  v.require(optimizer.weight_decay() >= 0 && optimizer.weight_decay() * optimizer.lr() <= 1,
            "optimizer.weight_decay", optimizer.weight_decay(),
            "must be >= 0 with optimizer.weight_decay x optimizer.lr <= 1");
  v.require(optimizer.grad_clip() >= 0, "optimizer.grad_clip", optimizer.grad_clip(),
            "must be >= 0 (0 = off)");
  v.require(optimizer.grad_accumulation_steps() >= 1, "optimizer.grad_accumulation_steps",
            optimizer.grad_accumulation_steps(), "must be >= 1");

  const auto& schedule = e.schedule();
  v.require(schedule.warmup_steps() >= 0, "schedule.warmup_steps", schedule.warmup_steps(),
            "must be >= 0");
  v.require(schedule.min_lr_ratio() >= 0 && schedule.min_lr_ratio() <= 1, "schedule.min_lr_ratio",
            schedule.min_lr_ratio(), "must be in [0, 1]");

  const auto& data = e.data();
  // The task sizes mirror data/synthetic.h (passkey_min_length, *_min_vocab_size); the data
  // tests check that both agree. Token 0, 16 filler tokens, 10 digits and 6 words come first.
  const int length = train.sequence_length(), vocab = model.vocab_size();
  switch (data.source()) {
    case proto::Data::SYNTHETIC_COPY:
      v.require(data.copy_period() >= 1 && data.copy_period() < length, "data.copy_period",
                data.copy_period(), "must be in [1, train.sequence_length)");
      break;
    case proto::Data::PASSKEY: {
      const int64_t digits = data.passkey_digits();
      v.require(digits >= 1 && digits <= 18, "data.passkey_digits", digits, "must be in [1, 18]");
      v.require(length >= 2 * digits + 12, "data.passkey_digits", digits,
                "needs train.sequence_length >= 2 x passkey_digits + 12");
      v.require(vocab >= 33, "model.vocab_size", vocab, "the PASSKEY task needs >= 33 tokens");
      v.require(data.needle_depth() <= 1, "data.needle_depth", data.needle_depth(),
                "must be in [0, 1], or < 0 for a random depth");
      break;
    }
    case proto::Data::ASSOCIATIVE_RECALL: {
      const int64_t pairs = data.recall_pairs(), queries = data.recall_queries();
      v.require(pairs >= 1, "data.recall_pairs", pairs, "must be >= 1");
      v.require(queries >= 1 && queries <= pairs, "data.recall_queries", queries,
                "must be in [1, data.recall_pairs]");
      v.require(length >= 2 * (pairs + queries), "data.recall_pairs", pairs,
                "needs train.sequence_length >= 2 x (recall_pairs + recall_queries)");
      v.require(vocab >= 17 + 2 * pairs, "model.vocab_size", vocab,
                "ASSOCIATIVE_RECALL needs >= 17 + 2 x data.recall_pairs tokens (" +
                    std::to_string(17 + 2 * pairs) + ")");
      break;
    }
    case proto::Data::TOKEN_SHARDS: {
      std::error_code error;
      v.require(!data.path().empty() && std::filesystem::exists(data.path(), error), "data.path",
                "\"" + data.path() + "\"",
                "does not exist; give the directory of *.srtok shards that "
                "launch/prepare_data.py wrote");
      break;
    }
  }

  v.require(e.checkpoint().every_steps() >= 0, "checkpoint.every_steps",
            e.checkpoint().every_steps(), "must be >= 0 (0 = never)");
  v.require(e.checkpoint().keep_last() >= 1, "checkpoint.keep_last", e.checkpoint().keep_last(),
            "must be >= 1");
  v.require(e.logging().log_every() >= 1, "logging.log_every", e.logging().log_every(),
            "must be >= 1");
  v.require(e.profiling().start_step() >= 1, "profiling.start_step", e.profiling().start_step(),
            "must be >= 1");
  v.require(e.profiling().num_steps() >= 1, "profiling.num_steps", e.profiling().num_steps(),
            "must be >= 1");
}

// The C++ enums mirror the schema's value for value, so to_struct converts by value. These checks
// fail the build when one side is reordered or gains a value the other lacks.
template <typename Cpp, typename Proto>
constexpr bool same_values(std::initializer_list<std::pair<Cpp, Proto>> pairs, int proto_size) {
  int count = 0;
  for (const auto& [cpp, proto] : pairs) {
    if (static_cast<int>(cpp) != static_cast<int>(proto)) return false;
    ++count;
  }
  return count == proto_size;
}
static_assert(
    same_values<RopeType, proto::Model::RopeType>({{RopeType::kDefault, proto::Model::DEFAULT},
                                                   {RopeType::kLinear, proto::Model::LINEAR},
                                                   {RopeType::kLlama3, proto::Model::LLAMA3},
                                                   {RopeType::kYarn, proto::Model::YARN}},
                                                  proto::Model::RopeType_ARRAYSIZE),
    "RopeType and Model.RopeType differ");
static_assert(same_values<LayoutKind, proto::Parallel::Layout>(
                  {{LayoutKind::kContiguous, proto::Parallel::CONTIGUOUS},
                   {LayoutKind::kZigzag, proto::Parallel::ZIGZAG},
                   {LayoutKind::kBalanced, proto::Parallel::BALANCED}},
                  proto::Parallel::Layout_ARRAYSIZE),
              "LayoutKind and Parallel.Layout differ");
static_assert(same_values<NMMode, proto::NMSparsity::Mode>(
                  {{NMMode::kSte, proto::NMSparsity::STE},
                   {NMMode::kSrSte, proto::NMSparsity::SR_STE},
                   {NMMode::kMdgfLinear, proto::NMSparsity::MDGF_LINEAR},
                   {NMMode::kMdgfExponential, proto::NMSparsity::MDGF_EXPONENTIAL},
                   {NMMode::kSdgfStepwise, proto::NMSparsity::SDGF_STEPWISE},
                   {NMMode::kSdgfGeometric, proto::NMSparsity::SDGF_GEOMETRIC}},
                  proto::NMSparsity::Mode_ARRAYSIZE),
              "NMMode and NMSparsity.Mode differ");
static_assert(same_values<NMGradientSemantics, proto::NMSparsity::GradientSemantics>(
                  {{NMGradientSemantics::kStraightThrough, proto::NMSparsity::STRAIGHT_THROUGH},
                   {NMGradientSemantics::kDecayed, proto::NMSparsity::DECAYED}},
                  proto::NMSparsity::GradientSemantics_ARRAYSIZE),
              "NMGradientSemantics and NMSparsity.GradientSemantics differ");
static_assert(same_values<ScheduleKind, proto::Schedule::Kind>(
                  {{ScheduleKind::kCosine, proto::Schedule::COSINE},
                   {ScheduleKind::kLinear, proto::Schedule::LINEAR},
                   {ScheduleKind::kConstant, proto::Schedule::CONSTANT}},
                  proto::Schedule::Kind_ARRAYSIZE),
              "ScheduleKind and Schedule.Kind differ");
static_assert(same_values<DataSource, proto::Data::Source>(
                  {{DataSource::kSyntheticCopy, proto::Data::SYNTHETIC_COPY},
                   {DataSource::kPasskey, proto::Data::PASSKEY},
                   {DataSource::kAssociativeRecall, proto::Data::ASSOCIATIVE_RECALL},
                   {DataSource::kTokenShards, proto::Data::TOKEN_SHARDS}},
                  proto::Data::Source_ARRAYSIZE),
              "DataSource and Data.Source differ");
static_assert(same_values<Device, proto::Train::Device>({{Device::kAuto, proto::Train::AUTO},
                                                         {Device::kCpu, proto::Train::CPU},
                                                         {Device::kCuda, proto::Train::CUDA}},
                                                        proto::Train::Device_ARRAYSIZE),
              "Device and Train.Device differ");
static_assert(same_values<DType, proto::Train::DType>({{DType::kFloat32, proto::Train::FLOAT32},
                                                       {DType::kBFloat16, proto::Train::BFLOAT16}},
                                                      proto::Train::DType_ARRAYSIZE),
              "DType and Train.DType differ");
static_assert(same_values<NanPolicy, proto::Train::NanPolicy>(
                  {{NanPolicy::kStop, proto::Train::STOP},
                   {NanPolicy::kSkipStep, proto::Train::SKIP_STEP}},
                  proto::Train::NanPolicy_ARRAYSIZE),
              "NanPolicy and Train.NanPolicy differ");

// Field by field by name, so reordering a struct cannot silently swap two fields of one type.
Experiment to_struct(const proto::Experiment& e) {
  Experiment out;
  out.name = e.name();
  const auto& m = e.model();
  out.model.num_layers = m.num_layers();
  out.model.hidden_size = m.hidden_size();
  out.model.num_heads = m.num_heads();
  out.model.num_kv_heads = m.num_kv_heads();
  out.model.ffn_hidden_size = m.ffn_hidden_size();
  out.model.vocab_size = m.vocab_size();
  out.model.rope_theta = m.rope_theta();
  out.model.rope_scaling_factor = m.rope_scaling_factor();
  out.model.max_context = m.max_context();
  out.model.tie_embeddings = m.tie_embeddings();
  out.model.rms_norm_eps = m.rms_norm_eps();
  out.model.init_std = m.init_std();
  out.model.activation_checkpointing = m.activation_checkpointing();
  out.model.loss_chunk_tokens = m.loss_chunk_tokens();
  out.model.rope_type = static_cast<RopeType>(m.rope_type());
  out.model.rope_original_max_context = m.rope_original_max_context();
  out.model.rope_low_freq_factor = m.rope_low_freq_factor();
  out.model.rope_high_freq_factor = m.rope_high_freq_factor();
  out.model.rope_beta_fast = m.rope_beta_fast();
  out.model.rope_beta_slow = m.rope_beta_slow();
  out.model.rope_attention_factor = m.rope_attention_factor();
  out.model.rope_truncate = m.rope_truncate();
  out.model.attention_bias = m.attention_bias();
  out.model.rope_override = m.rope_override();
  const auto& a = e.attention();
  out.attention.kind =
      a.kind() == proto::Attention::SPARSE ? AttentionKind::kSparse : AttentionKind::kDense;
  out.attention.block_size = a.block_size();
  out.attention.vertical_budget = a.vertical_budget();
  out.attention.vertical_fraction = a.vertical_fraction();
  out.attention.slash_budget = a.slash_budget();
  out.attention.slash_fraction = a.slash_fraction();
  out.attention.sink_tokens = a.sink_tokens();
  out.attention.local_tokens = a.local_tokens();
  out.attention.estimation_queries = a.estimation_queries();
  out.attention.reestimate_every = a.reestimate_every();
  out.attention.dense_warmup_steps = a.dense_warmup_steps();
  out.attention.deterministic_backward = a.deterministic_backward();
  out.attention.cudnn_dense = a.dense_kernel() == proto::Attention::CUDNN;
  const auto& p = e.parallel();
  out.parallel.data_parallel_size = p.data_parallel_size();
  out.parallel.context_parallel_size = p.context_parallel_size();
  out.parallel.intra_node_ring_size = p.intra_node_ring_size();
  out.parallel.layout = static_cast<LayoutKind>(p.layout());
  out.parallel.grad_bucket_mb = p.grad_bucket_mb();
  out.parallel.collective_timeout_s = p.collective_timeout_s();
  out.parallel.zero_stage = p.zero_stage();
  out.parallel.head_parallel_size = p.head_parallel_size();
  const auto& nm = e.nm_sparsity();
  out.nm_sparsity.enabled = nm.enabled();
  out.nm_sparsity.n = nm.n();
  out.nm_sparsity.m = nm.m();
  out.nm_sparsity.layers = {nm.layers().begin(), nm.layers().end()};
  out.nm_sparsity.mode = static_cast<NMMode>(nm.mode());
  out.nm_sparsity.gradient_semantics = static_cast<NMGradientSemantics>(nm.gradient_semantics());
  out.nm_sparsity.sr_ste_lambda = nm.sr_ste_lambda();
  out.nm_sparsity.kappa = nm.kappa();
  out.nm_sparsity.sdgf_interval = nm.sdgf_interval();
  out.nm_sparsity.sdgf_step = nm.sdgf_step();
  out.nm_sparsity.sdgf_factor = nm.sdgf_factor();
  out.nm_sparsity.hard_prune_step = nm.hard_prune_step();
  const auto& o = e.optimizer();
  out.optimizer.lr = o.lr();
  out.optimizer.beta1 = o.beta1();
  out.optimizer.beta2 = o.beta2();
  out.optimizer.eps = o.eps();
  out.optimizer.weight_decay = o.weight_decay();
  out.optimizer.grad_clip = o.grad_clip();
  out.optimizer.grad_accumulation_steps = o.grad_accumulation_steps();
  out.optimizer.offload_to_cpu = o.offload() == proto::Optimizer::CPU;
  const auto& s = e.schedule();
  out.schedule.kind = static_cast<ScheduleKind>(s.kind());
  out.schedule.warmup_steps = s.warmup_steps();
  out.schedule.min_lr_ratio = s.min_lr_ratio();
  const auto& d = e.data();
  out.data.source = static_cast<DataSource>(d.source());
  out.data.path = d.path();
  out.data.document_mask = d.document_mask();
  out.data.copy_period = d.copy_period();
  out.data.shuffle = d.shuffle();
  out.data.passkey_digits = d.passkey_digits();
  out.data.needle_depth = d.needle_depth();
  out.data.recall_pairs = d.recall_pairs();
  out.data.recall_queries = d.recall_queries();
  const auto& c = e.checkpoint();
  out.checkpoint.every_steps = c.every_steps();
  out.checkpoint.keep_last = c.keep_last();
  out.checkpoint.dir = c.dir();
  out.logging.log_every = e.logging().log_every();
  out.logging.tensorboard = e.logging().tensorboard();
  const auto& pr = e.profiling();
  out.profiling.enabled = pr.enabled();
  out.profiling.start_step = pr.start_step();
  out.profiling.num_steps = pr.num_steps();
  const auto& t = e.train();
  out.train.steps = t.steps();
  out.train.sequence_length = t.sequence_length();
  out.train.micro_batch_size = t.micro_batch_size();
  out.train.seed = t.seed();
  out.train.device = static_cast<Device>(t.device());
  out.train.dtype = static_cast<DType>(t.dtype());
  out.train.runs_root = t.runs_root();
  out.train.nan_policy = static_cast<NanPolicy>(t.nan_policy());
  return out;
}

// Text format of every field, defaults included, so a run dir records what actually ran.
std::string resolved_text(const proto::Experiment& e) {
  pb::TextFormat::Printer printer;
  printer.SetPrintMessageFieldsInIndexOrder(true);
  proto::Experiment full = e;
  // Touch every optional sub-message so the printer shows their defaults too.
  std::vector<pb::Message*> stack = {&full};
  while (!stack.empty()) {
    pb::Message* message = stack.back();
    stack.pop_back();
    const pb::Descriptor* descriptor = message->GetDescriptor();
    for (int i = 0; i < descriptor->field_count(); ++i) {
      const pb::FieldDescriptor* field = descriptor->field(i);
      if (field->is_repeated()) continue;
      if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        stack.push_back(message->GetReflection()->MutableMessage(message, field));
      } else if (!message->GetReflection()->HasField(*message, field)) {
        // Setting a field to its own default makes it present, so it is printed.
        const auto* r = message->GetReflection();
        switch (field->cpp_type()) {
          case pb::FieldDescriptor::CPPTYPE_INT32:
            r->SetInt32(message, field, field->default_value_int32());
            break;
          case pb::FieldDescriptor::CPPTYPE_INT64:
            r->SetInt64(message, field, field->default_value_int64());
            break;
          case pb::FieldDescriptor::CPPTYPE_UINT32:
            r->SetUInt32(message, field, field->default_value_uint32());
            break;
          case pb::FieldDescriptor::CPPTYPE_UINT64:
            r->SetUInt64(message, field, field->default_value_uint64());
            break;
          case pb::FieldDescriptor::CPPTYPE_DOUBLE:
            r->SetDouble(message, field, field->default_value_double());
            break;
          case pb::FieldDescriptor::CPPTYPE_FLOAT:
            r->SetFloat(message, field, field->default_value_float());
            break;
          case pb::FieldDescriptor::CPPTYPE_BOOL:
            r->SetBool(message, field, field->default_value_bool());
            break;
          case pb::FieldDescriptor::CPPTYPE_ENUM:
            r->SetEnum(message, field, field->default_value_enum());
            break;
          case pb::FieldDescriptor::CPPTYPE_STRING:
            r->SetString(message, field, field->default_value_string());
            break;
          default:
            break;
        }
      }
    }
  }
  std::string text;
  printer.PrintToString(full, &text);
  return text;
}

}  // namespace

const char* embedded_tiny_config() {
  return
#include "configs/tiny.pbtxt.inc"
      ;
}

Experiment load_experiment(const std::string& text, const std::string& source,
                           const std::vector<std::string>& overrides) {
  proto::Experiment experiment;
  FirstErrorCollector errors;
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &experiment)) {
    throw UserError(source + ": " + errors.error() +
                    " (the schema with every field is configs/sparsering.proto)");
  }
  for (const std::string& override_text : overrides) apply_override(override_text, &experiment);
  validate(experiment, source);
  Experiment out = to_struct(experiment);
  out.resolved_text = resolved_text(experiment);
  return out;
}

Experiment load_experiment_file(const std::string& path,
                                const std::vector<std::string>& overrides) {
  std::ifstream file(path);
  if (!file) throw UserError(path + ": cannot open config file; check the path");
  std::stringstream text;
  text << file.rdbuf();
  return load_experiment(text.str(), path, overrides);
}

void validate_world(const Experiment& experiment, int world_size) {
  const int needed =
      experiment.parallel.data_parallel_size * experiment.parallel.context_parallel_size;
  if (needed != world_size) {
    throw UserError(
        "parallel: data_parallel_size x context_parallel_size = " + std::to_string(needed) +
        " but the job has " + std::to_string(world_size) + " ranks; launch " +
        std::to_string(needed) + " ranks (mpirun -np) or change the sizes");
  }
}

}  // namespace sparsering::config

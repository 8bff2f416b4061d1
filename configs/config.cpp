// Loads an experiment: text format -> overrides -> validation -> plain structs.
#include "configs/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fstream>
#include <initializer_list>
#include <sstream>
#include <utility>
#include <vector>

#include "configs/config_validation.h"
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
  validate_experiment(experiment, source);
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

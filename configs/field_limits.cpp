#include "configs/field_limits.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <cmath>
#include <sstream>

#include "configs/sparsering.pb.h"
#include "configs/user_error.h"

namespace sparsering::config {
namespace {

namespace pb = google::protobuf;

template <typename T>
[[noreturn]] void refuse(const std::string& source, const std::string& field, const T& value,
                         const std::string& rule) {
  std::ostringstream message;
  message << source << ": " << field << " = " << value << ": " << rule;
  throw UserError(message.str());
}

void check_value(const pb::Message& message, const pb::FieldDescriptor* field, int index,
                 const std::string& path, const std::string& source) {
  const pb::Reflection* r = message.GetReflection();
  const bool repeated = field->is_repeated();
  auto real = [&](double value) {
    if (!std::isfinite(value)) refuse(source, path, value, "must be a finite number");
  };
  auto integer = [&](int64_t value) {
    if (value > kMaxIntegerField) {
      refuse(source, path, value, "must be <= " + std::to_string(kMaxIntegerField) + " (2^30)");
    }
  };
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      real(repeated ? r->GetRepeatedDouble(message, field, index) : r->GetDouble(message, field));
      break;
    case pb::FieldDescriptor::CPPTYPE_FLOAT:
      real(repeated ? r->GetRepeatedFloat(message, field, index) : r->GetFloat(message, field));
      break;
    case pb::FieldDescriptor::CPPTYPE_INT32:
      integer(repeated ? r->GetRepeatedInt32(message, field, index) : r->GetInt32(message, field));
      break;
    case pb::FieldDescriptor::CPPTYPE_INT64:
      integer(repeated ? r->GetRepeatedInt64(message, field, index) : r->GetInt64(message, field));
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT32:
      integer(repeated ? r->GetRepeatedUInt32(message, field, index)
                       : r->GetUInt32(message, field));
      break;
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      // 64-bit unsigned fields are seeds and hashes: every value is meaningful.
      break;
    case pb::FieldDescriptor::CPPTYPE_STRING: {
      const std::string value =
          repeated ? r->GetRepeatedString(message, field, index) : r->GetString(message, field);
      if (value.size() > kMaxStringField) {
        refuse(source, path,
               "\"" + value.substr(0, 32) + "...\" (" + std::to_string(value.size()) + " bytes)",
               "must be at most " + std::to_string(kMaxStringField) + " bytes");
      }
      if (value.find('\0') != std::string::npos) {
        refuse(source, path, "\"...\"", "must not contain a zero byte");
      }
      break;
    }
    default:
      break;
  }
}

void walk(const pb::Message& message, const std::string& prefix, const std::string& source) {
  const pb::Descriptor* descriptor = message.GetDescriptor();
  const pb::Reflection* r = message.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const pb::FieldDescriptor* field = descriptor->field(i);
    const std::string path = prefix + field->name();
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      if (field->is_repeated()) {
        for (int k = 0; k < r->FieldSize(message, field); ++k) {
          walk(r->GetRepeatedMessage(message, field, k), path + ".", source);
        }
      } else {
        // Unset sub-messages read as their defaults, which obey the rules too.
        walk(r->GetMessage(message, field), path + ".", source);
      }
      continue;
    }
    if (field->is_repeated()) {
      for (int k = 0; k < r->FieldSize(message, field); ++k) {
        check_value(message, field, k, path, source);
      }
    } else {
      check_value(message, field, -1, path, source);
    }
  }
}

}  // namespace

void validate_every_field(const pb::Message& experiment, const std::string& source) {
  walk(experiment, "", source);
}

void validate_size_products(const proto::Experiment& e, const std::string& source) {
  const auto& p = e.parallel();
  const int64_t world = int64_t{p.data_parallel_size()} * p.context_parallel_size();
  if (world > kMaxWorldSize) {
    refuse(source, "parallel.data_parallel_size x parallel.context_parallel_size", world,
           "must be <= " + std::to_string(kMaxWorldSize) + " ranks");
  }
  // Inputs are positive and <= 2^30 here (validated before), so long double holds the products
  // exactly enough to compare with the caps.
  const auto& m = e.model();
  const long double hidden = m.hidden_size(), heads = m.num_heads();
  const long double head_dim = heads > 0 ? hidden / heads : hidden;
  const long double per_layer =
      hidden * head_dim * (2.0L * m.num_heads() + 2.0L * m.num_kv_heads()) +
      3.0L * hidden * m.ffn_hidden_size();
  const long double parameters = m.num_layers() * per_layer + 2.0L * hidden * m.vocab_size();
  if (parameters > static_cast<long double>(kMaxParameters)) {
    refuse(source,
           "model (num_layers, hidden_size, num_heads, num_kv_heads, ffn_hidden_size, "
           "vocab_size)",
           static_cast<double>(parameters),
           "the model.num_layers x (attention + MLP) + model.hidden_size x model.vocab_size "
           "parameters must be <= 2^40; make model.hidden_size, model.ffn_hidden_size, "
           "model.num_heads, model.num_kv_heads or model.vocab_size smaller");
  }
  const long double tokens = static_cast<long double>(e.train().micro_batch_size()) *
                             p.data_parallel_size() * e.optimizer().grad_accumulation_steps() *
                             e.train().sequence_length();
  if (tokens > static_cast<long double>(kMaxTokensPerStep)) {
    refuse(source,
           "train.micro_batch_size x parallel.data_parallel_size x "
           "optimizer.grad_accumulation_steps x train.sequence_length",
           static_cast<double>(tokens), "tokens per step must be <= 2^40");
  }
}

}  // namespace sparsering::config

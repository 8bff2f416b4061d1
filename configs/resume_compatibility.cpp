#include "configs/resume_compatibility.h"

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>

#include <vector>

#include "configs/sparsering.pb.h"

namespace sparsering::config {
namespace {

namespace pb = google::protobuf;

// Field paths (from the Experiment message) that must match on resume. A message path covers
// every field of it, fields added to the schema later included.
const std::vector<std::string> kStateDefiningFields = {"model",
                                                       "nm_sparsity.enabled",
                                                       "nm_sparsity.n",
                                                       "nm_sparsity.m",
                                                       "nm_sparsity.layers",
                                                       "nm_sparsity.mode",
                                                       "nm_sparsity.gradient_semantics",
                                                       "parallel.layout"};

// The message holding the last field of `path` in `root`, and that field.
std::pair<const pb::Message*, const pb::FieldDescriptor*> resolve(const pb::Message& root,
                                                                  const std::string& path) {
  const pb::Message* message = &root;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string name = path.substr(start, dot == std::string::npos ? dot : dot - start);
    const pb::FieldDescriptor* field = message->GetDescriptor()->FindFieldByName(name);
    if (dot == std::string::npos) return {message, field};
    message = &message->GetReflection()->GetMessage(*message, field);
    start = dot + 1;
  }
}

std::string value_text(const pb::Message& message, const pb::FieldDescriptor* field) {
  std::string text;
  if (field->is_repeated()) {
    const int count = message.GetReflection()->FieldSize(message, field);
    text = "[";
    for (int i = 0; i < count; ++i) {
      std::string item;
      pb::TextFormat::PrintFieldValueToString(message, field, i, &item);
      text += (i ? ", " : "") + item;
    }
    return text + "]";
  }
  pb::TextFormat::PrintFieldValueToString(message, field, -1, &text);
  return text;
}

}  // namespace

std::string resume_incompatibility(const std::string& saved_config,
                                   const std::string& current_config) {
  proto::Experiment saved, current;
  if (!pb::TextFormat::ParseFromString(saved_config, &saved)) {
    return "its recorded config does not parse";
  }
  if (!pb::TextFormat::ParseFromString(current_config, &current)) {
    return "this run's resolved config does not parse";
  }
  for (const std::string& path : kStateDefiningFields) {
    const auto [saved_message, field] = resolve(saved, path);
    const auto [current_message, current_field] = resolve(current, path);
    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      std::string difference;
      pb::util::MessageDifferencer differencer;
      differencer.ReportDifferencesToString(&difference);
      if (differencer.Compare(
              saved_message->GetReflection()->GetMessage(*saved_message, field),
              current_message->GetReflection()->GetMessage(*current_message, current_field))) {
        continue;
      }
      // One line: the first difference, named by field path inside `path`.
      return path + " differs (" + difference.substr(0, difference.find('\n')) + ")";
    }
    const std::string before = value_text(*saved_message, field);
    const std::string now = value_text(*current_message, current_field);
    if (before != now) {
      return path + " differs (checkpoint " + before + ", this run " + now + ")";
    }
  }
  return "";
}

}  // namespace sparsering::config

#include "configs/schema_fields.h"

#include <google/protobuf/descriptor.h>

#include <cfloat>
#include <cstdint>
#include <limits>

#include "configs/sparsering.pb.h"

namespace sparsering::config {
namespace {

namespace pb = google::protobuf;

void walk(const pb::Descriptor* descriptor, const std::string& prefix,
          std::vector<SchemaField>& out) {
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const pb::FieldDescriptor* field = descriptor->field(i);
    const std::string path = prefix + field->name();
    SchemaField entry{path, FieldKind::kString, field->is_repeated(), ""};
    switch (field->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_MESSAGE:
        walk(field->message_type(), path + ".", out);
        continue;
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
        entry.kind = FieldKind::kReal;
        entry.max_value = "1.7976931348623157e308";
        break;
      case pb::FieldDescriptor::CPPTYPE_FLOAT:
        entry.kind = FieldKind::kReal;
        entry.max_value = "3.4028234663852886e38";
        break;
      case pb::FieldDescriptor::CPPTYPE_INT32:
        entry.kind = FieldKind::kSignedInteger;
        entry.max_value = std::to_string(std::numeric_limits<int32_t>::max());
        break;
      case pb::FieldDescriptor::CPPTYPE_INT64:
        entry.kind = FieldKind::kSignedInteger;
        entry.max_value = std::to_string(std::numeric_limits<int64_t>::max());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT32:
        entry.kind = FieldKind::kUnsignedInteger;
        entry.max_value = std::to_string(std::numeric_limits<uint32_t>::max());
        break;
      case pb::FieldDescriptor::CPPTYPE_UINT64:
        entry.kind = FieldKind::kUnsignedInteger;
        entry.max_value = std::to_string(std::numeric_limits<uint64_t>::max());
        break;
      case pb::FieldDescriptor::CPPTYPE_BOOL:
        entry.kind = FieldKind::kBool;
        break;
      case pb::FieldDescriptor::CPPTYPE_ENUM:
        entry.kind = FieldKind::kEnum;
        break;
      case pb::FieldDescriptor::CPPTYPE_STRING:
        entry.kind = FieldKind::kString;
        break;
    }
    out.push_back(entry);
  }
}

}  // namespace

std::vector<SchemaField> schema_fields() {
  std::vector<SchemaField> fields;
  walk(proto::Experiment::descriptor(), "", fields);
  return fields;
}

}  // namespace sparsering::config

// The leaf fields of the experiment schema (configs/sparsering.proto), found by walking its
// descriptors, as plain data for code that must not include the protobuf-generated headers
// (the tests, which see torch's bundled protobuf). Fields added to the schema appear here
// without any change.
#pragma once

#include <string>
#include <vector>

namespace sparsering::config {

enum class FieldKind { kReal, kSignedInteger, kUnsignedInteger, kString, kBool, kEnum };

struct SchemaField {
  std::string path;  // as --set takes it, e.g. "model.num_layers"
  FieldKind kind;
  bool repeated;
  std::string max_value;  // the type's largest value as text ("" for strings, bools, enums)
};

std::vector<SchemaField> schema_fields();

}  // namespace sparsering::config

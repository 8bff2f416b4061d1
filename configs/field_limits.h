// Validation rules that hold for every field of the schema whatever it means, applied by walking
// the message descriptors (so fields added to configs/sparsering.proto later obey them too), and
// the caps on products of sizes, computed in 64 bits so that no combination overflows.
#pragma once

#include <cstdint>
#include <string>

namespace google::protobuf {
class Message;
}  // namespace google::protobuf
namespace sparsering::proto {
class Experiment;
}  // namespace sparsering::proto

namespace sparsering::config {

// Largest value of any integer field: sums of two such values still fit a 32-bit int, and
// products are checked against the caps below in 64 bits.
constexpr int64_t kMaxIntegerField = int64_t{1} << 30;
// Longest string field (PATH_MAX on Linux, counting the terminating zero).
constexpr size_t kMaxStringField = 4095;
// Largest job (data_parallel_size x context_parallel_size ranks).
constexpr int64_t kMaxWorldSize = int64_t{1} << 16;
// Largest model (parameters) and step (tokens over every replica and micro step).
constexpr int64_t kMaxParameters = int64_t{1} << 40;
constexpr int64_t kMaxTokensPerStep = int64_t{1} << 40;

// Every real-valued field is finite, every integer field is at most kMaxIntegerField, every
// string at most kMaxStringField bytes. Throws UserError "<source>: <field path> = <value>: ...".
void validate_every_field(const google::protobuf::Message& experiment, const std::string& source);

// World size, parameter count and tokens per step within their caps.
void validate_size_products(const proto::Experiment& experiment, const std::string& source);

}  // namespace sparsering::config

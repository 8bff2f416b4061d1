// Plain C++ view of configs/checkpoint_metadata.proto (the protobuf code stays in the config
// library, away from torch's bundled protobuf headers).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sparsering::config {

struct CheckpointShardRecord {
  int rank = 0;
  std::string file;
  uint64_t bytes = 0;
  uint64_t checksum = 0;
};

struct CheckpointMetadata {
  int64_t step = 0;
  std::string config_text;
  int world_size = 0, data_parallel_size = 0, context_parallel_size = 0, intra_node_ring_size = 0;
  int64_t sequences_consumed = 0;
  std::string nm_state;
  std::vector<CheckpointShardRecord> shards;
  std::string created;
};

std::string checkpoint_metadata_text(const CheckpointMetadata& metadata);
// Throws UserError naming `source` when the text is not valid metadata.
CheckpointMetadata parse_checkpoint_metadata(const std::string& text, const std::string& source);

// Why a checkpoint written under `saved_config` cannot continue under `current_config` (both
// resolved experiment texts), or "" when it can: the model must be identical; the rest (steps,
// learning rate, attention kind, ...) may change between runs.
std::string checkpoint_incompatibility(const std::string& saved_config,
                                       const std::string& current_config);

}  // namespace sparsering::config

#include "configs/checkpoint_metadata.h"

#include <google/protobuf/text_format.h>
#include <google/protobuf/util/message_differencer.h>

#include "configs/checkpoint_metadata.pb.h"
#include "configs/sparsering.pb.h"
#include "configs/user_error.h"

namespace sparsering::config {

std::string checkpoint_metadata_text(const CheckpointMetadata& m) {
  proto::CheckpointMetadata message;
  message.set_step(m.step);
  message.set_config(m.config_text);
  message.set_world_size(m.world_size);
  message.set_data_parallel_size(m.data_parallel_size);
  message.set_context_parallel_size(m.context_parallel_size);
  message.set_intra_node_ring_size(m.intra_node_ring_size);
  message.set_sequences_consumed(m.sequences_consumed);
  message.set_nm_state(m.nm_state);
  message.set_created(m.created);
  for (const auto& shard : m.shards) {
    auto* s = message.add_shards();
    s->set_rank(shard.rank);
    s->set_file(shard.file);
    s->set_bytes(shard.bytes);
    s->set_checksum(shard.checksum);
  }
  std::string text;
  google::protobuf::TextFormat::PrintToString(message, &text);
  return text;
}

CheckpointMetadata parse_checkpoint_metadata(const std::string& text, const std::string& source) {
  proto::CheckpointMetadata message;
  if (!google::protobuf::TextFormat::ParseFromString(text, &message) || !message.has_step() ||
      !message.has_config()) {
    throw UserError(source +
                    ": not a SparseRing checkpoint metadata file (unreadable or "
                    "incomplete); resume from another checkpoint");
  }
  CheckpointMetadata m;
  m.step = message.step();
  m.config_text = message.config();
  m.world_size = message.world_size();
  m.data_parallel_size = message.data_parallel_size();
  m.context_parallel_size = message.context_parallel_size();
  m.intra_node_ring_size = message.intra_node_ring_size();
  m.sequences_consumed = message.sequences_consumed();
  m.nm_state = message.nm_state();
  m.created = message.created();
  for (const auto& s : message.shards())
    m.shards.push_back({s.rank(), s.file(), s.bytes(), s.checksum()});
  return m;
}

std::string checkpoint_incompatibility(const std::string& saved_config,
                                       const std::string& current_config) {
  proto::Experiment saved, current;
  if (!google::protobuf::TextFormat::ParseFromString(saved_config, &saved)) {
    return "its recorded config does not parse";
  }
  google::protobuf::TextFormat::ParseFromString(current_config, &current);
  std::string differences;
  google::protobuf::util::MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&differences);
  if (differencer.Compare(saved.model(), current.model())) return "";
  // One line: the first difference, named by field path.
  const auto end = differences.find('\n');
  return "the model differs (" + differences.substr(0, end) + ")";
}

}  // namespace sparsering::config

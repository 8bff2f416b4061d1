#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <ftw.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "configs/user_error.h"
#include "trainer/atomic_file.h"
#include "trainer/fault_injection.h"

namespace sparsering::trainer {
namespace {

namespace fs = std::filesystem;

std::string step_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step_%08lld", static_cast<long long>(step));
  return name;
}

std::string shard_name(int rank) {
  char name[32];
  std::snprintf(name, sizeof(name), "rank_%05d.pt", rank);
  return name;
}

std::string read_file(const fs::path& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

void sync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// Removes a directory tree. Not std::filesystem::remove_all: libtorch.so exports its own copy of
// that symbol, which the dynamic linker may bind instead of libstdc++'s, and which crashes.
void remove_tree(const fs::path& path) {
  auto remove_entry = [](const char* entry, const struct stat*, int, struct FTW*) {
    return ::remove(entry);
  };
  ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

torch::optim::AdamWParamState* adamw_state(torch::optim::AdamW& adamw, const at::Tensor& p) {
  auto& states = adamw.state();
  const auto found = states.find(p.unsafeGetTensorImpl());
  if (found == states.end()) return nullptr;
  return static_cast<torch::optim::AdamWParamState*>(found->second.get());
}

}  // namespace

uint64_t file_checksum(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  uint64_t hash = 1469598103934665603ULL;
  std::vector<char> buffer(1 << 20);
  while (file) {
    file.read(buffer.data(), buffer.size());
    for (std::streamsize i = 0; i < file.gcount(); ++i) {
      hash = (hash ^ static_cast<unsigned char>(buffer[i])) * 1099511628211ULL;
    }
  }
  return hash;
}

Checkpointer::Checkpointer(std::string dir, const config::Experiment& experiment,
                           parallel::Communicator& world)
    : dir_(std::move(dir)),
      keep_last_(experiment.checkpoint.keep_last),
      experiment_(experiment),
      world_(world) {}

void Checkpointer::save(const ResumeState& state, MasterWeightOptimizer& optimizer) {
  const int rank = world_.rank(), world = world_.size();
  const fs::path final_dir = fs::path(dir_) / step_name(state.step);
  const fs::path temporary_dir = final_dir.string() + ".tmp";
  if (rank == 0) {
    remove_tree(temporary_dir);
    fs::create_directories(temporary_dir);
  }
  world_.barrier();

  // This rank's shard: master weights and optimizer state of every world-th parameter.
  torch::serialize::OutputArchive archive;
  auto& masters = optimizer.master_weights();
  for (size_t i = rank; i < masters.size(); i += world) {
    const std::string key = std::to_string(i);
    archive.write("weight." + key, masters[i].detach().cpu());
    if (auto* s = adamw_state(optimizer.adamw(), masters[i])) {
      archive.write("step." + key, at::scalar_tensor(s->step(), at::kLong));
      archive.write("exp_avg." + key, s->exp_avg().cpu());
      archive.write("exp_avg_sq." + key, s->exp_avg_sq().cpu());
    }
  }
  const fs::path shard = temporary_dir / shard_name(rank);
  // Serialized in memory first, so a full disk is one checked write naming the file and the size.
  std::ostringstream serialized;
  archive.save_to(serialized);
  write_new_file(shard.string(), serialized.str());
  maybe_inject_fault(FaultPoint::kCheckpointShardsWritten, rank, state.step);

  // Rank 0 records every shard's size and checksum, then publishes the directory.
  auto record = at::tensor({static_cast<int64_t>(fs::file_size(shard)),
                            static_cast<int64_t>(file_checksum(shard.string()))},
                           at::kLong);
  const auto records = world_.all_gather(record);
  if (rank == 0) {
    config::CheckpointMetadata metadata;
    metadata.step = state.step;
    metadata.config_text = experiment_.resolved_text;
    metadata.world_size = world;
    metadata.data_parallel_size = experiment_.parallel.data_parallel_size;
    metadata.context_parallel_size = experiment_.parallel.context_parallel_size;
    metadata.intra_node_ring_size = experiment_.parallel.intra_node_ring_size;
    metadata.sequences_consumed = state.sequences_consumed;
    metadata.nm_state = state.nm_state;
    metadata.created = utc_now();
    for (int r = 0; r < world; ++r) {
      metadata.shards.push_back({r, shard_name(r),
                                 static_cast<uint64_t>(records[r][0].item<int64_t>()),
                                 static_cast<uint64_t>(records[r][1].item<int64_t>())});
    }
    write_file_atomically((temporary_dir / "metadata.pbtxt").string(),
                          config::checkpoint_metadata_text(metadata));
    remove_tree(final_dir);
    fs::rename(temporary_dir, final_dir);
    sync_path(dir_);
    write_file_atomically((fs::path(dir_) / "latest").string(), step_name(state.step) + "\n");
    // Keep the newest keep_last complete checkpoints; drop leftovers of interrupted saves. Only
    // steps before this one are candidates: a newer step is no older step of this run
    // (trainer/run_directory.h keeps other runs' checkpoints out of this directory).
    std::vector<fs::path> complete;
    for (const auto& entry : fs::directory_iterator(dir_)) {
      const std::string name = entry.path().filename().string();
      if (name.rfind("step_", 0) != 0) continue;
      if (name.size() > 4 && name.substr(name.size() - 4) == ".tmp") {
        remove_tree(entry.path());
      } else {
        complete.push_back(entry.path());
      }
    }
    std::sort(complete.begin(), complete.end());
    complete.erase(
        std::remove_if(complete.begin(), complete.end(),
                       [&](const fs::path& p) { return p.filename() > step_name(state.step); }),
        complete.end());
    for (size_t i = 0; i + keep_last_ < complete.size(); ++i) remove_tree(complete[i]);
  }
  world_.barrier();
}

std::string Checkpointer::verify(const std::string& step_dir) const {
  const fs::path metadata_path = fs::path(step_dir) / "metadata.pbtxt";
  if (!fs::is_regular_file(metadata_path)) return "no metadata.pbtxt (incomplete checkpoint)";
  config::CheckpointMetadata metadata;
  try {
    metadata = config::parse_checkpoint_metadata(read_file(metadata_path), metadata_path.string());
  } catch (const UserError& error) {
    return error.what();
  }
  const std::string incompatible =
      config::checkpoint_incompatibility(metadata.config_text, experiment_.resolved_text);
  if (!incompatible.empty()) return incompatible;
  if (metadata.world_size != world_.size() ||
      metadata.data_parallel_size != experiment_.parallel.data_parallel_size ||
      metadata.context_parallel_size != experiment_.parallel.context_parallel_size) {
    return "written by " + std::to_string(metadata.world_size) + " ranks (dp " +
           std::to_string(metadata.data_parallel_size) + " x cp " +
           std::to_string(metadata.context_parallel_size) + "), this job has " +
           std::to_string(world_.size()) + " (dp " +
           std::to_string(experiment_.parallel.data_parallel_size) + " x cp " +
           std::to_string(experiment_.parallel.context_parallel_size) + ")";
  }
  for (const auto& shard : metadata.shards) {
    const fs::path path = fs::path(step_dir) / shard.file;
    if (!fs::is_regular_file(path)) return shard.file + " is missing";
    if (fs::file_size(path) != shard.bytes) return shard.file + " has the wrong size (truncated?)";
    if (file_checksum(path.string()) != shard.checksum) return shard.file + " fails its checksum";
  }
  return "";
}

std::optional<std::string> Checkpointer::find(const std::string& resume,
                                              const std::string& flag) const {
  if (resume != "auto") {
    fs::path path = resume;
    // A checkpoint directory (with `latest`) or a step directory.
    if (fs::is_regular_file(path / "latest")) {
      path /= read_file(path / "latest").substr(0, step_name(0).size());
    }
    if (!fs::is_directory(path)) {
      throw UserError(flag + " " + resume + ": no such checkpoint directory; give a step_* " +
                      "directory or use " + flag + " auto");
    }
    const std::string problem = verify(path.string());
    if (!problem.empty()) {
      throw UserError(flag + " " + resume + ": refused: " + problem +
                      "; resume from another checkpoint or start a new run");
    }
    return path.string();
  }
  if (!fs::is_directory(dir_)) return std::nullopt;
  // Newest first: `latest` normally, an older one if the newest is damaged.
  std::vector<fs::path> candidates;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("step_", 0) == 0 && name.find(".tmp") == std::string::npos) {
      candidates.push_back(entry.path());
    }
  }
  std::sort(candidates.rbegin(), candidates.rend());
  std::string rejected;
  for (const auto& candidate : candidates) {
    const std::string problem = verify(candidate.string());
    if (problem.empty()) {
      if (!rejected.empty() && world_.rank() == 0) {
        // A fallback is never silent: say which newer checkpoints were passed over and why.
        std::cerr << "sparsering: warning: " << flag << " auto: falling back to "
                  << candidate.filename().string() << "; newer checkpoints refused:" << rejected
                  << std::endl;
      }
      return candidate.string();
    }
    if (problem.find("the model differs") != std::string::npos ||
        problem.find("written by") != std::string::npos) {
      // A different model or mesh is a different run: refuse rather than fall back silently.
      throw UserError(flag + " auto: " + candidate.string() + " refused: " + problem +
                      "; use another run directory or the matching config");
    }
    rejected += " " + candidate.filename().string() + " (" + problem + ")";
  }
  if (!rejected.empty()) {
    throw UserError(flag + " auto: no intact checkpoint in " + dir_ + ":" + rejected);
  }
  return std::nullopt;
}

ResumeState Checkpointer::load(const std::string& step_dir, MasterWeightOptimizer& optimizer) {
  const fs::path metadata_path = fs::path(step_dir) / "metadata.pbtxt";
  const auto metadata =
      config::parse_checkpoint_metadata(read_file(metadata_path), metadata_path.string());
  auto& masters = optimizer.master_weights();
  torch::NoGradGuard no_grad;
  for (const auto& shard : metadata.shards) {
    torch::serialize::InputArchive archive;
    archive.load_from((fs::path(step_dir) / shard.file).string());
    for (size_t i = shard.rank; i < masters.size(); i += metadata.world_size) {
      const std::string key = std::to_string(i);
      at::Tensor weight;
      archive.read("weight." + key, weight);
      masters[i].copy_(weight);
      at::Tensor step;
      if (archive.try_read("step." + key, step)) {
        auto state = std::make_unique<torch::optim::AdamWParamState>();
        state->step(step.item<int64_t>());
        at::Tensor exp_avg, exp_avg_sq;
        archive.read("exp_avg." + key, exp_avg);
        archive.read("exp_avg_sq." + key, exp_avg_sq);
        state->exp_avg(exp_avg.to(masters[i].device()));
        state->exp_avg_sq(exp_avg_sq.to(masters[i].device()));
        optimizer.adamw().state()[masters[i].unsafeGetTensorImpl()] = std::move(state);
      }
    }
  }
  optimizer.sync_model_from_masters();
  return {metadata.step, metadata.sequences_consumed, metadata.nm_state};
}

}  // namespace sparsering::trainer

#include "trainer/checkpoint/checkpoint.h"

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
#include "trainer/checkpoint/atomic_file.h"
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

struct SavedSlice {
  size_t parameter;
  int64_t begin;
  at::Tensor weight, exp_avg, exp_avg_sq;
};

struct SavedShard {
  std::vector<SavedSlice> slices;
  int64_t adam_step = 0;
};

// One rank's file: the slice format, or the earlier format of whole parameters rank, rank +
// world, ... under "weight.<parameter>" with per-parameter AdamW steps.
SavedShard read_shard(const std::string& path, int rank, int world) {
  torch::serialize::InputArchive archive;
  archive.load_from(path);
  SavedShard shard;
  at::Tensor index;
  if (archive.try_read("slices", index)) {
    at::Tensor step;
    archive.read("adam_step", step);
    shard.adam_step = step.item<int64_t>();
    const auto rows = index.accessor<int64_t, 2>();
    for (int64_t j = 0; j < index.size(0); ++j) {
      SavedSlice slice{static_cast<size_t>(rows[j][0]), rows[j][1], {}, {}, {}};
      const std::string key = std::to_string(j);
      archive.read("weight." + key, slice.weight);
      if (rows[j][3]) {
        archive.read("exp_avg." + key, slice.exp_avg);
        archive.read("exp_avg_sq." + key, slice.exp_avg_sq);
      }
      shard.slices.push_back(std::move(slice));
    }
    return shard;
  }
  for (size_t i = rank;; i += world) {
    const std::string key = std::to_string(i);
    SavedSlice slice{i, 0, {}, {}, {}};
    if (!archive.try_read("weight." + key, slice.weight)) break;
    slice.weight = slice.weight.reshape(-1);
    at::Tensor step;
    if (archive.try_read("step." + key, step)) {
      shard.adam_step = std::max(shard.adam_step, step.item<int64_t>());
      archive.read("exp_avg." + key, slice.exp_avg);
      archive.read("exp_avg_sq." + key, slice.exp_avg_sq);
      slice.exp_avg = slice.exp_avg.reshape(-1);
      slice.exp_avg_sq = slice.exp_avg_sq.reshape(-1);
    }
    shard.slices.push_back(std::move(slice));
  }
  return shard;
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

void Checkpointer::save(const ResumeState& state, CheckpointState& model_state) {
  const int rank = world_.rank(), world = world_.size();
  const fs::path final_dir = fs::path(dir_) / step_name(state.step);
  const fs::path temporary_dir = final_dir.string() + ".tmp";
  if (rank == 0) {
    remove_tree(temporary_dir);
    fs::create_directories(temporary_dir);
  }
  world_.barrier();

  // This rank's shard: the slices of master weights and AdamW moments it owns.
  torch::serialize::OutputArchive archive;
  std::vector<int64_t> index;  // per slice: parameter, first element, length, has moments
  const auto slices = model_state.slices_to_save(rank, world);
  for (size_t j = 0; j < slices.size(); ++j) {
    const StateSlice& slice = slices[j];
    const bool moments = slice.exp_avg.defined();
    index.insert(index.end(), {static_cast<int64_t>(slice.parameter), slice.begin,
                               slice.weight.numel(), moments ? 1 : 0});
    // clone(): a view would be saved with its whole underlying buffer.
    archive.write("weight." + std::to_string(j), slice.weight.detach().cpu().clone());
    if (moments) {
      archive.write("exp_avg." + std::to_string(j), slice.exp_avg.cpu().clone());
      archive.write("exp_avg_sq." + std::to_string(j), slice.exp_avg_sq.cpu().clone());
    }
  }
  archive.write("slices", at::tensor(index, at::kLong).view({-1, 4}));
  archive.write("adam_step", at::scalar_tensor(model_state.adam_step(), at::kLong));
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
    if (problem.find("the model differs") != std::string::npos) {
      // A different model is a different run: refuse rather than fall back silently.
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

ResumeState Checkpointer::load(const std::string& step_dir, CheckpointState& model_state) {
  const fs::path metadata_path = fs::path(step_dir) / "metadata.pbtxt";
  const auto metadata =
      config::parse_checkpoint_metadata(read_file(metadata_path), metadata_path.string());
  std::vector<SavedShard> shards;
  int64_t adam_step = 0;
  for (const auto& shard : metadata.shards) {
    shards.push_back(
        read_shard((fs::path(step_dir) / shard.file).string(), shard.rank, metadata.world_size));
    adam_step = std::max(adam_step, shards.back().adam_step);
  }
  // Whatever mesh and stage wrote the checkpoint, each slice this rank holds takes the elements
  // of the saved slices that overlap it.
  auto targets = model_state.slices_to_load(/*with_moments=*/adam_step > 0);
  std::vector<int64_t> filled(targets.size(), 0);
  torch::NoGradGuard no_grad;
  for (const SavedShard& shard : shards) {
    for (const SavedSlice& saved : shard.slices) {
      for (size_t t = 0; t < targets.size(); ++t) {
        StateSlice& target = targets[t];
        if (target.parameter != saved.parameter) continue;
        const int64_t first = std::max(target.begin, saved.begin);
        const int64_t last =
            std::min(target.begin + target.weight.numel(), saved.begin + saved.weight.numel());
        if (first >= last) continue;
        const int64_t length = last - first;
        target.weight.narrow(0, first - target.begin, length)
            .copy_(saved.weight.narrow(0, first - saved.begin, length));
        if (target.exp_avg.defined() && saved.exp_avg.defined()) {
          target.exp_avg.narrow(0, first - target.begin, length)
              .copy_(saved.exp_avg.narrow(0, first - saved.begin, length));
          target.exp_avg_sq.narrow(0, first - target.begin, length)
              .copy_(saved.exp_avg_sq.narrow(0, first - saved.begin, length));
        }
        filled[t] += length;
      }
    }
  }
  for (size_t t = 0; t < targets.size(); ++t) {
    if (filled[t] != targets[t].weight.numel()) {
      throw UserError(step_dir + ": the shards cover " + std::to_string(filled[t]) + " of " +
                      std::to_string(targets[t].weight.numel()) + " elements of parameter " +
                      std::to_string(targets[t].parameter) +
                      " (a shard is missing or from another model); resume from another "
                      "checkpoint");
    }
  }
  model_state.finish_load(adam_step);
  return {metadata.step, metadata.sequences_consumed, metadata.nm_state};
}

}  // namespace sparsering::trainer

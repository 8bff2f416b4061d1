#include "parallel/layout.h"

#include <stdexcept>
#include <string>

namespace sparsering::parallel {

const char* layout_name(config::LayoutKind kind) {
  switch (kind) {
    case config::LayoutKind::kContiguous:
      return "contiguous";
    case config::LayoutKind::kZigzag:
      return "zigzag";
    case config::LayoutKind::kBalanced:
      return "balanced";
  }
  return "unknown";
}

TokenLayout::TokenLayout(config::LayoutKind kind, int64_t num_blocks, int block_size, int world)
    : kind_(kind), num_blocks_(num_blocks), block_size_(block_size), world_(world) {
  const int64_t unit = kind == config::LayoutKind::kZigzag ? 2 * world : world;
  if (world < 1 || num_blocks % unit != 0) {
    throw std::invalid_argument(
        std::string(layout_name(kind)) + " layout: " + std::to_string(num_blocks) +
        " blocks do not split into " + std::to_string(unit) + " equal parts");
  }
  const int64_t per_rank = num_blocks / world;
  for (int rank = 0; rank < world; ++rank) {
    std::vector<int32_t> ids;
    switch (kind) {
      case config::LayoutKind::kContiguous:
        for (int64_t i = 0; i < per_rank; ++i) ids.push_back(rank * per_rank + i);
        break;
      case config::LayoutKind::kZigzag: {
        // Chunk r and its mirror 2W-1-r: equal dense causal work per rank.
        const int64_t chunk = num_blocks / (2 * world);
        for (int64_t i = 0; i < chunk; ++i) ids.push_back(rank * chunk + i);
        for (int64_t i = 0; i < chunk; ++i) ids.push_back((2 * world - 1 - rank) * chunk + i);
        break;
      }
      case config::LayoutKind::kBalanced:
        // Stripes r, r+W, r+2W, ...: every rank samples every region of the sequence, so
        // diagonal and column work split evenly (MTraining's striped layout).
        for (int64_t i = 0; i < per_rank; ++i) ids.push_back(rank + i * world);
        break;
    }
    blocks_.push_back(at::tensor(ids, at::kInt));
  }
}

TokenLayout TokenLayout::merged(int group) const {
  if (group < 1 || world_ % group != 0) {
    throw std::invalid_argument("layout: a group of " + std::to_string(group) +
                                " ranks does not divide the " + std::to_string(world_) + " ranks");
  }
  TokenLayout result = *this;
  result.world_ = world_ / group;
  result.blocks_.clear();
  for (int rank = 0; rank < result.world_; ++rank) {
    std::vector<at::Tensor> parts(blocks_.begin() + rank * group,
                                  blocks_.begin() + (rank + 1) * group);
    result.blocks_.push_back(at::cat(parts));
  }
  return result;
}

at::Tensor TokenLayout::positions_of(int rank) const {
  const auto offsets = at::arange(block_size_, at::kLong);
  return (blocks_[rank].to(at::kLong).unsqueeze(1) * block_size_ + offsets.unsqueeze(0))
      .reshape(-1);
}

std::pair<int, int64_t> TokenLayout::owner_of(int64_t block) const {
  for (int rank = 0; rank < world_; ++rank) {
    const auto* ids = blocks_[rank].data_ptr<int32_t>();
    for (int64_t slot = 0; slot < blocks_per_rank(); ++slot) {
      if (ids[slot] == block) return {rank, slot};
    }
  }
  throw std::out_of_range("layout: block " + std::to_string(block) + " is held by no rank");
}

at::Tensor TokenLayout::shard(const at::Tensor& sequence, int rank) const {
  return sequence.index_select(1, positions_of(rank).to(sequence.device()));
}

at::Tensor TokenLayout::unshard(const at::Tensor& gathered) const {
  auto sizes = gathered.sizes().vec();  // [world, batch, local, ...]
  std::vector<int64_t> out_sizes = {sizes[1], sequence_length()};
  out_sizes.insert(out_sizes.end(), sizes.begin() + 3, sizes.end());
  auto sequence = at::empty(out_sizes, gathered.options());
  for (int rank = 0; rank < world_; ++rank) {
    sequence.index_copy_(1, positions_of(rank).to(gathered.device()), gathered[rank]);
  }
  return sequence;
}

}  // namespace sparsering::parallel

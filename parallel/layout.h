// Token layouts as block permutations (docs/algorithms.md, 2): which global blocks of a sequence
// each context-parallel rank holds, in local order. Kernels derive causal masking from the global
// ids, so every layout runs through the same attention code; the data loader applies the layout
// once and RoPE uses the global positions, so nothing is re-striped inside attention.
#pragma once

#include <ATen/ATen.h>

#include "configs/config.h"

namespace sparsering::parallel {

class TokenLayout {
 public:
  // `num_blocks` global blocks of `block_size` tokens over `world` ranks; zigzag needs
  // num_blocks divisible by 2 x world, the others by world.
  TokenLayout(config::LayoutKind kind, int64_t num_blocks, int block_size, int world);

  config::LayoutKind kind() const { return kind_; }
  int world() const { return world_; }
  int block_size() const { return block_size_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t blocks_per_rank() const { return num_blocks_ / world_; }
  int64_t sequence_length() const { return num_blocks_ * block_size_; }

  // Global block ids held by `rank`, in local order: int32 [blocks_per_rank] on CPU.
  const at::Tensor& blocks_of(int rank) const { return blocks_[rank]; }
  // Global token positions held by `rank`: int64 [blocks_per_rank * block_size] on CPU.
  at::Tensor positions_of(int rank) const;
  // The rank and local block slot that hold global block `block`.
  std::pair<int, int64_t> owner_of(int64_t block) const;
  // This rank's tokens of a [batch, sequence, ...] tensor, gathered along dimension 1.
  at::Tensor shard(const at::Tensor& sequence, int rank) const;
  // Inverse of shard: scatters every rank's [world, batch, local, ...] tokens into the sequence.
  at::Tensor unshard(const at::Tensor& gathered) const;
  // The layout of world / group ranks in which rank j holds the blocks of ranks j x group ...
  // j x group + group - 1 of this one, in that order: what a head-parallel group of `group`
  // consecutive ranks holds together after its all-to-all (parallel/head_all_to_all.h).
  TokenLayout merged(int group) const;

 private:
  config::LayoutKind kind_;
  int64_t num_blocks_;
  int block_size_;
  int world_;
  std::vector<at::Tensor> blocks_;
};

const char* layout_name(config::LayoutKind kind);

}  // namespace sparsering::parallel

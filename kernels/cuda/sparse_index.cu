// The block-sparse index of one (query shard, kv shard) pair, built on the GPU (see
// sparse_index_cuda.h for the two passes). One warp per CSR row: its 32 lanes test 32 candidate
// entries at a time, a ballot counts them, and in the fill pass each active lane writes its entry
// at the row offset plus the number of active lanes before it, so the entries keep ascending
// order without a sort. This replaces building [heads, q_blocks, k_blocks] boolean masks and
// compacting them (kernels/cpu/sparse_index_cpu.cpp is the reference twin, on ATen ops).
#include <climits>
#include <cstdint>

#include "sparse_index_cuda.h"

namespace sparsering::kernels {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr unsigned kFullMask = 0xffffffffu;

// Block (query block qb, kv block kb) of head h is active when it is causal and a chosen diagonal
// crosses it, or when the kv block is made wholly of the head's columns.
__device__ __forceinline__ bool block_active(const SparseIndexParams& p, int h, int qb, int kb) {
  const int q = p.q_block_ids[qb];
  const int k = p.k_block_ids[kb];
  if (q < k) return false;
  const int64_t head_row = static_cast<int64_t>(h) * p.global_blocks;
  return p.block_diagonals[head_row + (q - k)] || p.column_blocks[head_row + k];
}

// With document masks: true when global key position `key` lies before every query of query
// block qb's documents in sequence b (pure work saving, the kernels mask elementwise too).
__device__ __forceinline__ bool before_documents(const SparseIndexParams& p, int b, int qb,
                                                 int key) {
  return p.first_keys != nullptr && key < p.first_keys[static_cast<int64_t>(b) * p.q_blocks + qb];
}

// The three row families, one warp per row, in this order over the grid's warps.
enum class Family { kBlocks, kColumns, kTransposedBlocks };

struct Row {
  Family family;
  int64_t row;  // within its family
};

__device__ __forceinline__ Row row_of_warp(const SparseIndexParams& p, int64_t warp) {
  const int64_t query_rows = static_cast<int64_t>(p.batch) * p.heads * p.q_blocks;
  if (warp < query_rows) return {Family::kBlocks, warp};
  if (warp < 2 * query_rows) return {Family::kColumns, warp - query_rows};
  return {Family::kTransposedBlocks, warp - 2 * query_rows};
}

// Candidate i of a row: whether it is an entry, and its value.
struct Candidate {
  bool active;
  int value;
};

__device__ __forceinline__ Candidate block_candidate(const SparseIndexParams& p, int b, int h,
                                                     int qb, int kb) {
  const int last_key = p.k_block_ids[kb] * p.block_size + p.block_size - 1;
  return {block_active(p, h, qb, kb) && !before_documents(p, b, qb, last_key), kb};
}

// A chosen column in this kv shard, not after the row's last query, not inside one of the row's
// active blocks (their full blocks already cover it).
__device__ __forceinline__ Candidate column_candidate(const SparseIndexParams& p, int b, int h,
                                                      int qb, int c) {
  const int64_t at = static_cast<int64_t>(h) * p.num_columns + c;
  const int slot = p.column_slots[at];
  const int position = p.columns[at];
  const bool active = slot >= 0 &&
                      position <= p.q_block_ids[qb] * p.block_size + p.block_size - 1 &&
                      !block_active(p, h, qb, slot) && !before_documents(p, b, qb, position);
  return {active, p.column_tokens[at]};
}

template <bool kFill>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    sparse_index_kernel(const __grid_constant__ SparseIndexParams p) {
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int64_t query_rows = static_cast<int64_t>(p.batch) * p.heads * p.q_blocks;
  const int64_t t_rows =
      p.transposed_blocks ? static_cast<int64_t>(p.batch) * p.kv_heads * p.k_blocks : 0;
  if (warp >= 2 * query_rows + t_rows) return;
  const Row r = row_of_warp(p, warp);

  int b, h = 0, qb = 0, kb = 0, candidates;
  const int group = p.heads / p.kv_heads;
  if (r.family == Family::kTransposedBlocks) {
    kb = static_cast<int>(r.row % p.k_blocks);
    h = static_cast<int>(r.row / p.k_blocks % p.kv_heads);  // the kv head here
    b = static_cast<int>(r.row / (static_cast<int64_t>(p.k_blocks) * p.kv_heads));
    candidates = group * p.q_blocks;
  } else {
    qb = static_cast<int>(r.row % p.q_blocks);
    h = static_cast<int>(r.row / p.q_blocks % p.heads);
    b = static_cast<int>(r.row / (static_cast<int64_t>(p.q_blocks) * p.heads));
    candidates = r.family == Family::kBlocks ? p.k_blocks : p.num_columns;
  }

  int32_t* entries = nullptr;
  int base = 0;
  if constexpr (kFill) {
    const int32_t* offsets = r.family == Family::kBlocks    ? p.block_row_offsets
                             : r.family == Family::kColumns ? p.column_row_offsets
                                                            : p.t_block_row_offsets;
    entries = r.family == Family::kBlocks    ? p.block_cols
              : r.family == Family::kColumns ? p.column_indices
                                             : p.t_block_entries;
    base = offsets[r.row];
  }
  int count = 0;
  for (int start = 0; start < candidates; start += 32) {
    const int i = start + lane;
    Candidate c{false, 0};
    if (i < candidates) {
      switch (r.family) {
        case Family::kBlocks:
          c = block_candidate(p, b, h, qb, i);
          break;
        case Family::kColumns:
          c = column_candidate(p, b, h, qb, i);
          break;
        case Family::kTransposedBlocks: {
          // Entries (GQA group member g, query block) ascending: value = head * q_blocks + qb.
          const int head = h * group + i / p.q_blocks;
          const int q_block = i % p.q_blocks;
          c = block_candidate(p, b, head, q_block, kb);
          c.value = head * p.q_blocks + q_block;
          break;
        }
      }
    }
    const unsigned active = __ballot_sync(kFullMask, c.active);
    if constexpr (kFill) {
      if (c.active) entries[base + count + __popc(active & ((1u << lane) - 1))] = c.value;
    }
    count += __popc(active);
  }
  if constexpr (!kFill) {
    if (lane == 0) {
      int32_t* counts = r.family == Family::kBlocks    ? p.block_counts
                        : r.family == Family::kColumns ? p.column_counts
                                                       : p.t_block_counts;
      counts[r.row] = count;
    }
  }
}

cudaError_t validate(const SparseIndexParams& p, bool fill) {
  if (p.batch <= 0 || p.heads <= 0 || p.kv_heads <= 0 || p.heads % p.kv_heads != 0 ||
      p.block_size <= 0 || p.q_blocks <= 0 || p.k_blocks <= 0 || p.global_blocks <= 0 ||
      p.num_columns < 0) {
    return cudaErrorInvalidValue;
  }
  // Positions (block id x block size) and transposed entries (head x q_blocks) stay in int32.
  if (static_cast<int64_t>(p.global_blocks) * p.block_size > INT_MAX ||
      static_cast<int64_t>(p.heads) * p.q_blocks > INT_MAX ||
      static_cast<int64_t>(p.heads / p.kv_heads) * p.q_blocks > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  if (!p.q_block_ids || !p.k_block_ids || !p.block_diagonals || !p.column_blocks ||
      (p.num_columns > 0 && (!p.columns || !p.column_slots || !p.column_tokens))) {
    return cudaErrorInvalidValue;
  }
  // The entry arrays may be null where a family has no entries (the fill pass writes only
  // active candidates); the offsets always exist.
  if (fill) {
    if (!p.block_row_offsets || !p.column_row_offsets ||
        (p.transposed_blocks && !p.t_block_row_offsets)) {
      return cudaErrorInvalidValue;
    }
  } else if (!p.block_counts || !p.column_counts || (p.transposed_blocks && !p.t_block_counts)) {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <bool kFill>
cudaError_t launch(const SparseIndexParams& p, cudaStream_t stream) {
  if (const cudaError_t e = validate(p, kFill); e != cudaSuccess) return e;
  const int64_t rows =
      2 * static_cast<int64_t>(p.batch) * p.heads * p.q_blocks +
      (p.transposed_blocks ? static_cast<int64_t>(p.batch) * p.kv_heads * p.k_blocks : 0);
  const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  sparse_index_kernel<kFill><<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sparse_index_counts(const SparseIndexParams& p, cudaStream_t stream) {
  return launch<false>(p, stream);
}

cudaError_t launch_sparse_index_fill(const SparseIndexParams& p, cudaStream_t stream) {
  return launch<true>(p, stream);
}

}  // namespace sparsering::kernels

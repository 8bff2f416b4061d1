// The one masking rule of the attention kernels (kernels/sparse_attention_params.h): a query at
// global position q_pos sees a key at key_pos when key_pos <= q_pos (causal) and, with document
// masking, when key_pos >= key_start, the first key of the query's document. Which keys a row may
// see at all (its active blocks and columns) is the index's business; this is the per-pair test
// inside a tile. The backward kernels and the wgmma forward (two rows per thread, both key starts
// in registers) test each pair with it; the mma.sync forward applies its two halves as separate
// passes over a score tile (causal, then the document start row by row, so that one key start is
// live at a time).
#pragma once

#include <cstdint>

namespace sparsering::kernels {

// True when the pair (query at q_pos, key at key_pos) is hidden; key_start is ignored without
// document masking.
template <bool kDocumentMask>
__device__ __forceinline__ bool key_hidden(int key_pos, int q_pos, int key_start) {
  if constexpr (kDocumentMask) {
    return key_pos > q_pos || key_pos < key_start;
  } else {
    return key_pos > q_pos;
  }
}

// The same with the key start in memory (shared memory, say), read only with document masking
// and only when the causal test passes, as the written-out `||` would.
template <bool kDocumentMask>
__device__ __forceinline__ bool key_hidden_at(int key_pos, int q_pos, const int32_t* key_start) {
  if constexpr (kDocumentMask) {
    return key_pos > q_pos || key_pos < *key_start;
  } else {
    return key_pos > q_pos;
  }
}

}  // namespace sparsering::kernels

// Tile geometry of the backward's mma.sync kernels (sparse_attention_backward_dq.cu,
// sparse_attention_backward_dkdv.cu, sparse_attention_backward_kv.cu) and of the launcher.
#pragma once

namespace sparsering::kernels {

// Query rows per tile and keys per kv tile.
inline constexpr int kTile = 64;
// Each warp owns 16 rows (query rows, or keys in the dK/dV kernel).
inline constexpr int kWarps = 4;
inline constexpr int kThreads = kWarps * 32;
// Shared-memory buffers of the streamed tiles (cp.async double buffering). The dQ kernel takes its
// own count as a template parameter (see launch_query_major and launch_deterministic_dq in
// sparse_attention_backward_dq.cu).
inline constexpr int kStages = 2;

// Shared-memory tile of kTile rows x kHeadDim elements. Each row is padded by 16 bytes so that the
// 8 row addresses of one ldmatrix 8x8 matrix fall into 8 distinct 16-byte bank groups.
template <int kHeadDim>
struct TileGeometry {
  static constexpr int kStride = kHeadDim + 8;  // elements between rows
  static constexpr int kElems = kTile * kStride;
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte chunks
  static constexpr int kChunksPerThread = kTile * kChunksPerRow / kThreads;
  static_assert(kTile * kChunksPerRow % kThreads == 0, "tile copy must split evenly");
};

}  // namespace sparsering::kernels

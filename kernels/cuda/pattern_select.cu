// Vertical-slash pattern selection (kernels/vertical_slash.h, select_pattern) in one launch,
// instead of two at::topk calls, boolean masks, prefix sums, scatters and a host sync on the
// column count: at 32K-128K tokens those ~30 small launches cost about 1 ms per layer.
//
// grid (heads, 2): CTA (h, 0) picks head h's columns, CTA (h, 1) its diagonals.
//   1. Radix select (8 bits a pass, most significant first, 4 passes over the row) finds the
//      k-th largest mass as an order-preserving uint32 key T, and how many entries equal to T
//      the top k take. Shared-memory histograms, warp-aggregated (__match_any_sync): the masses
//      of a row share few exponents, so plain atomics would serialise on a handful of bins.
//   2. One ordered pass in tiles of kThreads x kItems: an entry is chosen when its key is above
//      T, or equal to T and among the first `take_equal` such entries in index order, or it is
//      one of the first sink / local entries. Block-wide prefix sums give each chosen column its
//      slot (ascending positions, no sort); a chosen diagonal marks its one or two block offsets.
#include <climits>
#include <cstdint>

#include "device_constants.cuh"
#include "pattern_select_cuda.h"

namespace sparsering::kernels {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kItems = 4;  // consecutive entries per thread in the ordered pass
constexpr int kTile = kThreads * kItems;
constexpr int kRadixBits = 8;
constexpr int kBins = 1 << kRadixBits;
static_assert(kWarps == 32, "block_exclusive_scan folds one value per warp in one warp");

// Order-preserving map of a float to uint32: for non-NaN a, b: a < b iff key(a) < key(b)
// (-0 sorts just below +0). The CPU twin uses the same map.
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
}

struct Threshold {
  uint32_t key;        // the k-th largest key
  int64_t take_equal;  // entries equal to it that belong to the top k (>= 1)
};

// The k-th largest key of row[0, length), 1 <= k <= length. Every thread gets the result.
__device__ Threshold radix_select(const float* __restrict__ row, int64_t length, int64_t k) {
  __shared__ int histogram[kBins];
  __shared__ int chosen_bin;
  __shared__ long long remaining_after;
  const int lane = threadIdx.x % 32;
  uint32_t prefix = 0, prefix_mask = 0;
  int64_t remaining = k;
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int b = threadIdx.x; b < kBins; b += kThreads) histogram[b] = 0;
    __syncthreads();
    // Every thread runs the same number of iterations, so whole warps reach __match_any_sync.
    for (int64_t base = 0; base < length; base += kThreads) {
      const int64_t i = base + threadIdx.x;
      int bin = -1;
      if (i < length) {
        const uint32_t key = order_key(__ldg(row + i));
        if ((key & prefix_mask) == prefix) bin = static_cast<int>((key >> shift) & (kBins - 1));
      }
      const unsigned peers = __match_any_sync(kFullMask, bin);
      if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&histogram[bin], __popc(peers));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      // From the top bin down: the bin holding the remaining-th largest matching key.
      int64_t above = 0;
      int bin = kBins - 1;
      for (; bin > 0 && above + histogram[bin] < remaining; --bin) above += histogram[bin];
      chosen_bin = bin;
      remaining_after = remaining - above;
    }
    __syncthreads();
    prefix |= static_cast<uint32_t>(chosen_bin) << shift;
    prefix_mask |= static_cast<uint32_t>(kBins - 1) << shift;
    remaining = remaining_after;
    __syncthreads();  // chosen_bin and remaining_after are rewritten by the next pass
  }
  return {prefix, remaining};
}

// Exclusive prefix sum of `value` over the CTA in thread order; `total` gets the sum. Every
// thread must call it.
__device__ __forceinline__ int block_exclusive_scan(int value, int* total) {
  __shared__ int warp_offsets[kWarps + 1];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = value;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const int other = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) warp_offsets[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    const int own = warp_offsets[lane];
    int running = own;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int other = __shfl_up_sync(kFullMask, running, offset);
      if (lane >= offset) running += other;
    }
    warp_offsets[lane] = running - own;
    if (lane == 31) warp_offsets[kWarps] = running;
  }
  __syncthreads();
  const int result = warp_offsets[warp] + inclusive - value;
  *total = warp_offsets[kWarps];
  __syncthreads();  // warp_offsets is rewritten by the next call
  return result;
}

__global__ void __launch_bounds__(kThreads)
    select_pattern_kernel(const __grid_constant__ PatternSelectParams p) {
  const int head = blockIdx.x;
  const bool columns = blockIdx.y == 0;
  const float* row = (columns ? p.vertical : p.slash) + static_cast<int64_t>(head) * p.length;
  const int64_t k = columns ? p.num_columns : p.num_diagonals;
  const int64_t always = columns ? p.sink_tokens : p.local_tokens;
  const int64_t num_blocks = p.length / p.block_size;

  Threshold threshold{0xffffffffu, 0};
  if (k > 0) threshold = radix_select(row, p.length, k);

  int64_t equal_seen = 0, chosen_seen = 0;
  for (int64_t base = 0; base < p.length; base += kTile) {
    const int64_t first = base + static_cast<int64_t>(threadIdx.x) * kItems;
    uint32_t keys[kItems];
    int equal_count = 0;
#pragma unroll
    for (int u = 0; u < kItems; ++u) {
      keys[u] = first + u < p.length ? order_key(__ldg(row + first + u)) : 0u;
      equal_count += k > 0 && first + u < p.length && keys[u] == threshold.key;
    }
    int equal_total;
    int64_t equal_before = equal_seen + block_exclusive_scan(equal_count, &equal_total);
    bool chosen[kItems];
    int chosen_count = 0;
#pragma unroll
    for (int u = 0; u < kItems; ++u) {
      const int64_t i = first + u;
      const bool inside = i < p.length;
      const bool equal = k > 0 && inside && keys[u] == threshold.key;
      chosen[u] = inside && ((k > 0 && keys[u] > threshold.key) ||
                             (equal && equal_before < threshold.take_equal) || i < always);
      equal_before += equal;
      chosen_count += chosen[u];
    }
    int chosen_total;
    int64_t slot = chosen_seen + block_exclusive_scan(chosen_count, &chosen_total);
#pragma unroll
    for (int u = 0; u < kItems; ++u) {
      if (!chosen[u]) continue;
      const int64_t i = first + u;
      if (columns) {
        if (slot < p.width) p.columns[static_cast<int64_t>(head) * p.width + slot] = i;
        ++slot;
      } else {
        bool* offsets = p.block_diagonals + static_cast<int64_t>(head) * num_blocks;
        const int64_t d = i / p.block_size;
        if (d < num_blocks) offsets[d] = true;
        if (i % p.block_size != 0 && d + 1 < num_blocks) offsets[d + 1] = true;
      }
    }
    equal_seen += equal_total;
    chosen_seen += chosen_total;
  }
  if (columns) {
    for (int64_t s = chosen_seen + threadIdx.x; s < p.width; s += kThreads) {
      p.columns[static_cast<int64_t>(head) * p.width + s] = -1;
    }
  }
}

bool in_range(int64_t value, int64_t length) { return value >= 0 && value <= length; }

}  // namespace

cudaError_t launch_select_pattern(const PatternSelectParams& p, cudaStream_t stream) {
  if (p.heads < 0 || p.heads > 65535 || p.length < 0 || p.length > INT_MAX || p.block_size <= 0 ||
      p.width < 0 || !in_range(p.num_columns, p.length) || !in_range(p.num_diagonals, p.length) ||
      !in_range(p.sink_tokens, p.length) || !in_range(p.local_tokens, p.length)) {
    return cudaErrorInvalidValue;
  }
  if (p.heads == 0 || p.length == 0) return cudaSuccess;
  if (p.vertical == nullptr || p.slash == nullptr || (p.width > 0 && p.columns == nullptr) ||
      (p.length >= p.block_size && p.block_diagonals == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(p.heads), 2);
  select_pattern_kernel<<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace sparsering::kernels

// Hopper warpgroup matrix multiply (wgmma.mma_async, PTX ISA 8.0, sm_90a) for the attention
// kernels: shared-memory matrix descriptors of 128-byte-swizzled tiles, the fences and group
// waits, and the instruction shapes of the wgmma kernels.
//
// Tile layout (both operand roles read the same bytes): a tile of R rows x 64 x P elements is P
// panels of 64 columns, panel p at byte p * R * 128; inside a panel row r takes 128 bytes at r *
// 128 and its 16-byte chunk c sits at chunk c ^ (r % 8) (the 128-byte swizzle, Swizzle<3,4,3>; tile
// bases are 1024-byte aligned so the pattern starts on its boundary). Read with the rows as M/N
// and the columns as K it is the K-major canonical layout (8-row groups 1024 bytes apart: SBO);
// read with the rows as K and the columns as M/N it is the MN-major one (8-row groups: SBO = 1024,
// next 64 M/N elements: LBO = one panel). See the PTX ISA, "Shared Memory Matrix Layout".
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace sparsering::kernels::wgmma {

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` inside a 128-byte-swizzled panel.
__device__ __forceinline__ int swizzled_offset(int row, int chunk) {
  return row * 128 + ((chunk ^ (row & 7)) << 4);
}

// Descriptor of a 128-byte-swizzled operand starting at shared-memory byte address `address`:
// leading (LBO) and stride (SBO) byte offsets as defined above, encoded >> 4.
__device__ __forceinline__ uint64_t descriptor(uint32_t address, uint32_t leading_bytes,
                                               uint32_t stride_bytes) {
  return static_cast<uint64_t>((address & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>(leading_bytes >> 4) << 16) |
         (static_cast<uint64_t>(stride_bytes >> 4) << 32) | (1ull << 62);
}

// Orders this thread's register accesses before the next wgmma (accumulators or A fragments
// written by ordinary instructions).
__device__ __forceinline__ void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

__device__ __forceinline__ void commit_group() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

// Waits until at most kPending committed wgmma groups of this warpgroup are in flight.
template <int kPending>
__device__ __forceinline__ void wait_group() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// Makes this thread's ordinary shared-memory writes (st.shared, cp.async) visible to wgmma, which
// reads through the async proxy.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Keeps the compiler from moving reads or writes of accumulator registers across a wgmma that is
// still in flight (the asm statements only name them as operands).
template <int kTiles>
__device__ __forceinline__ void fence_operands(float (&d)[kTiles][4]) {
#pragma unroll
  for (int i = 0; i < kTiles; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
  }
}

// The instructions as inline PTX, one macro per shape with the element type ("bf16" or "f16")
// spliced into the opcode; the accumulator operand lists are long and regular.
#define SPARSERING_WGMMA_SS_M64N64K16(TYPE)                                                       \
  asm volatile(                                                                                   \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                 \
      " "                                                                                         \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "    \
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "                        \
      "%32, %33, p, 1, 1, %35, %36;\n}\n"                                                         \
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), \
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), \
        "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), \
        "+f"(d[7][2]), "+f"(d[7][3])                                                              \
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB))

#define SPARSERING_WGMMA_SS_M64N128K16(TYPE)                                                       \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                                 \
      " "                                                                                          \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "     \
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, " \
      "%37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, " \
      "%55, %56, %57, %58, %59, %60, %61, %62, %63}, "                                             \
      "%64, %65, p, 1, 1, %67, %68;\n}\n"                                                          \
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),  \
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),  \
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]),  \
        "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),  \
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),  \
        "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]),  \
        "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]),                \
        "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]),            \
        "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]),            \
        "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),            \
        "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]),            \
        "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])                                             \
      : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransA), "n"(kTransB))

#define SPARSERING_WGMMA_RS_M64N64K16(TYPE)                                                       \
  asm volatile(                                                                                   \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                 \
      " "                                                                                         \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "    \
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "                        \
      "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"                                             \
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), \
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), \
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), \
        "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), \
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), \
        "+f"(d[7][2]), "+f"(d[7][3])                                                              \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB))

#define SPARSERING_WGMMA_RS_M64N128K16(TYPE)                                                       \
  asm volatile(                                                                                    \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                 \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                                 \
      " "                                                                                          \
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "     \
      "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, " \
      "%37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, " \
      "%55, %56, %57, %58, %59, %60, %61, %62, %63}, "                                             \
      "{%64, %65, %66, %67}, %68, p, 1, 1, %70;\n}\n"                                              \
      : "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]),  \
        "+f"(d[1][2]), "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]),  \
        "+f"(d[3][0]), "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]),  \
        "+f"(d[4][2]), "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]),  \
        "+f"(d[6][0]), "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]),  \
        "+f"(d[7][2]), "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]),  \
        "+f"(d[9][0]), "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]),                \
        "+f"(d[10][1]), "+f"(d[10][2]), "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]),            \
        "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]), "+f"(d[12][1]), "+f"(d[12][2]),            \
        "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]), "+f"(d[13][3]),            \
        "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]),            \
        "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])                                             \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB))

// d (64 x 64, fp32) = (scale_d ? d : 0) + A B, K = 16, A and B from shared memory. kTransA /
// kTransB = 1 reads A as M-major / B as N-major. The accumulator is a warpgroup's m64n64 fragment:
// warp w holds rows 16 w + g and 16 w + g + 8 (lane = 4 g + t), d[n][0..1] / d[n][2..3] at
// columns 8 n + 2 t, + 1 of those rows, as in mma.sync.m16n8.
template <typename Element, int kTransA, int kTransB>
__device__ __forceinline__ void mma_m64n64k16_ss(float (&d)[8][4], uint64_t desc_a, uint64_t desc_b,
                                                 int scale_d) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    SPARSERING_WGMMA_SS_M64N64K16("bf16");
  } else {
    SPARSERING_WGMMA_SS_M64N64K16("f16");
  }
}

// As mma_m64n64k16_ss with N = 128 (16 accumulator n-tiles).
template <typename Element, int kTransA, int kTransB>
__device__ __forceinline__ void mma_m64n128k16_ss(float (&d)[16][4], uint64_t desc_a,
                                                  uint64_t desc_b, int scale_d) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    SPARSERING_WGMMA_SS_M64N128K16("bf16");
  } else {
    SPARSERING_WGMMA_SS_M64N128K16("f16");
  }
}

// d (64 x 128, fp32) = (scale_d ? d : 0) + A B, K = 16, A from registers (the m16n8k16 A
// fragment of the warp's 16 rows: a[0] row g, columns 2t..; a[1] row g + 8; a[2], a[3] the same
// at columns + 8), B from shared memory (kTransB = 1: N-major).
template <typename Element, int kTransB>
__device__ __forceinline__ void mma_m64n128k16_rs(float (&d)[16][4], const uint32_t (&a)[4],
                                                  uint64_t desc_b, int scale_d) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    SPARSERING_WGMMA_RS_M64N128K16("bf16");
  } else {
    SPARSERING_WGMMA_RS_M64N128K16("f16");
  }
}

// As mma_m64n128k16_rs with N = 64 (8 accumulator n-tiles).
template <typename Element, int kTransB>
__device__ __forceinline__ void mma_m64n64k16_rs(float (&d)[8][4], const uint32_t (&a)[4],
                                                 uint64_t desc_b, int scale_d) {
  if constexpr (std::is_same_v<Element, __nv_bfloat16>) {
    SPARSERING_WGMMA_RS_M64N64K16("bf16");
  } else {
    SPARSERING_WGMMA_RS_M64N64K16("f16");
  }
}

// m64nNk16 with N = 8 x the accumulator's n-tiles (64 or 128), for kernels whose N is a template
// parameter (the head dim or the key tile): the shape follows from d.
template <typename Element, int kTransA, int kTransB, int kTiles>
__device__ __forceinline__ void mma_ss(float (&d)[kTiles][4], uint64_t desc_a, uint64_t desc_b,
                                       int scale_d) {
  static_assert(kTiles == 8 || kTiles == 16, "N = 64 or 128");
  if constexpr (kTiles == 16) {
    mma_m64n128k16_ss<Element, kTransA, kTransB>(d, desc_a, desc_b, scale_d);
  } else {
    mma_m64n64k16_ss<Element, kTransA, kTransB>(d, desc_a, desc_b, scale_d);
  }
}

template <typename Element, int kTransB, int kTiles>
__device__ __forceinline__ void mma_rs(float (&d)[kTiles][4], const uint32_t (&a)[4],
                                       uint64_t desc_b, int scale_d) {
  static_assert(kTiles == 8 || kTiles == 16, "N = 64 or 128");
  if constexpr (kTiles == 16) {
    mma_m64n128k16_rs<Element, kTransB>(d, a, desc_b, scale_d);
  } else {
    mma_m64n64k16_rs<Element, kTransB>(d, a, desc_b, scale_d);
  }
}

#undef SPARSERING_WGMMA_SS_M64N64K16
#undef SPARSERING_WGMMA_SS_M64N128K16
#undef SPARSERING_WGMMA_RS_M64N64K16
#undef SPARSERING_WGMMA_RS_M64N128K16

}  // namespace sparsering::kernels::wgmma

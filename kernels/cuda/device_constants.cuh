// Constants shared by the attention kernels' device code.
#pragma once

namespace sparsering::kernels {

// Softmax exponentials run in base 2 (exp2 is one MUFU instruction): e^x = 2^(x log2 e).
inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;
// Every lane of a warp, for the *_sync warp intrinsics.
inline constexpr unsigned kFullMask = 0xffffffffu;

}  // namespace sparsering::kernels

#!/usr/bin/env bash
# Compiles every CUDA translation unit of kernels/cuda/ to a cubin with the flags of the CMake build
# and writes its SASS (cuobjdump -sass) as OUT_DIR/<unit>.sass and its per-kernel resources
# (registers, shared and local memory; cuobjdump -res-usage) as OUT_DIR/<unit>.res, so that
# launch/sass_compare.py can prove a source move left the machine code unchanged.
#   launch/sass_dump.sh OUT_DIR [SM]      (SM defaults to 90a, the top-level CMakeLists.txt's)
#   NVCC=... CUOBJDUMP=... override the tools.
# Runs one nvcc at a time under nice: a pure-move check is not worth starving other work.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [SM]" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
sm=${2:-90a}
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
nvcc=$(command -v "${NVCC:-nvcc}" || echo /usr/local/cuda/bin/nvcc)
# cuobjdump from CUOBJDUMP, PATH or nvcc's directory (a pip triton also ships one).
cuobjdump=$(command -v "${CUOBJDUMP:-cuobjdump}" || echo "$(dirname "$nvcc")/cuobjdump")
[ -x "$cuobjdump" ] ||
  { echo "sass_dump: error: no cuobjdump on PATH or next to $nvcc; set CUOBJDUMP" >&2; exit 2; }
# The compile line of the CMake build (build/compile_commands.json): kernels/CMakeLists.txt's flags,
# the Release defaults, and the CUDA flags torch's CMake package sets for every CUDA target.
flags=(-DONNX_NAMESPACE=onnx_c2 -gencode="arch=compute_${sm},code=sm_${sm}"
       -Xcudafe=--diag_suppress=cc_clobber_ignored --expt-relaxed-constexpr --expt-extended-lambda
       -O3 -DNDEBUG --use_fast_math -lineinfo -Xptxas=-warn-spills -Xcompiler=-Wall -std=c++17 -I.)
for unit in kernels/cuda/*.cu; do
  name=$(basename "$unit" .cu)
  echo "sass_dump: $unit" >&2
  nice -n 19 "$nvcc" -cubin "${flags[@]}" -o "$out/$name.cubin" "$unit"
  "$cuobjdump" -sass "$out/$name.cubin" >"$out/$name.sass"
  "$cuobjdump" -res-usage "$out/$name.cubin" >"$out/$name.res"
done

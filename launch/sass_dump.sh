#!/usr/bin/env bash
# Compiles every CUDA translation unit of kernels/cuda/ to a cubin with the exact compile line of
# the CMake build (its compile_commands.json, so the flags have one source: kernels/CMakeLists.txt
# and the toolchain) and writes its SASS (cuobjdump -sass) as OUT_DIR/<unit>.sass and its
# per-kernel resources (registers, shared and local memory; cuobjdump -res-usage) as
# OUT_DIR/<unit>.res, so that launch/sass_compare.py can prove a source move left the machine code
# unchanged.
#   launch/sass_dump.sh OUT_DIR [UNIT]...   (build directory: SPARSERING_BUILD_DIR, default build/)
# UNIT names limit the dump to those units (e.g. sparse_attention_forward); default: all.
#   CUOBJDUMP=... overrides the tool.
# Runs one nvcc at a time under nice: a pure-move check is not worth starving other work.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [UNIT]..." >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
units=" $* "
root=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
build=$(cd "${SPARSERING_BUILD_DIR:-$root/build}" 2>/dev/null && pwd) ||
  { echo "sass_dump: error: no build directory ${SPARSERING_BUILD_DIR:-$root/build}" >&2; exit 2; }
commands=$build/compile_commands.json
grep -q '\.cu"' "$commands" 2>/dev/null || {
  echo "sass_dump: error: $commands has no CUDA files; configure a CUDA build first" \
       "(cmake -S . -B build on a machine with nvcc)" >&2
  exit 2
}
# cuobjdump from CUOBJDUMP, PATH or the CUDA toolkit (a pip triton also ships one).
cuobjdump=$(command -v "${CUOBJDUMP:-cuobjdump}" || echo /usr/local/cuda/bin/cuobjdump)
[ -x "$cuobjdump" ] ||
  { echo "sass_dump: error: no cuobjdump on PATH or in /usr/local/cuda/bin; set CUOBJDUMP" >&2; exit 2; }
# One line per unit: the unit's name, a tab, its compile command with "-c ... -o OBJECT" turned
# into "-cubin -o OUT_DIR/<unit>.cubin".
lines=$(python3 - "$commands" "$out" <<'PY'
import json, os, shlex, sys
commands, out = sys.argv[1], sys.argv[2]
for entry in json.load(open(commands)):
    if not entry["file"].endswith(".cu") or "/kernels/cuda/" not in entry["file"]:
        continue
    name = os.path.basename(entry["file"])[:-3]
    args = shlex.split(entry["command"])
    args[args.index("-o") + 1] = os.path.join(out, name + ".cubin")
    args[args.index("-c")] = "-cubin"
    print(name + "\t" + entry["directory"] + "\t" + shlex.join(args))
PY
)
while IFS=$'\t' read -r name directory command; do
  [ "$units" = "  " ] || [[ "$units" == *" $name "* ]] || continue
  echo "sass_dump: $name" >&2
  (cd "$directory" && eval "nice -n 19 $command")
  "$cuobjdump" -sass "$out/$name.cubin" >"$out/$name.sass"
  "$cuobjdump" -res-usage "$out/$name.cubin" >"$out/$name.res"
done <<<"$lines"

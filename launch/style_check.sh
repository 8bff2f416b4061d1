#!/usr/bin/env bash
# The tree's style gate, run by CI: every tracked C++/CUDA file is clang-format clean (.clang-format:
# Google, 100 columns) and every shell script is shellcheck clean at warning level.
#   launch/style_check.sh        (needs clang-format and shellcheck on PATH)
set -euo pipefail
# The source tree this script belongs to, through any symlink to launch/.
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
for tool in clang-format shellcheck; do
  command -v "$tool" >/dev/null ||
    { echo "style_check: error: $tool not found; install it (Debian: apt-get install $tool)" >&2; exit 2; }
done
git rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
  { echo "style_check: error: $PWD is not a git checkout; run it in a clone of SparseRing" >&2; exit 2; }
status=0
mapfile -t sources < <(git ls-files '*.cpp' '*.h' '*.cu' '*.cuh')
mapfile -t scripts < <(git ls-files '*.sh' '*.sbatch' .ci/run)
if ! clang-format --dry-run --Werror "${sources[@]}"; then
  echo "style_check: clang-format would change the files above; run clang-format -i on them" >&2
  status=1
fi
if ! shellcheck -S warning "${scripts[@]}"; then
  echo "style_check: shellcheck found the problems above" >&2
  status=1
fi
[ "$status" = 0 ] && echo "style_check: ${#sources[@]} C++/CUDA files and ${#scripts[@]} scripts clean"
exit "$status"

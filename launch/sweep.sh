#!/usr/bin/env bash
# Runs every run of a sweep (configs/sweeps/*.pbtxt), one after another, through launch/train.sh.
#
#   launch/sweep.sh SWEEP_FILE [--jobs-only] [--runs-root DIR]
#
# Each run trains into <runs root>/<sweep name>/<run name>/ with --resume auto, so a run that was
# interrupted continues from its newest checkpoint; a run whose directory holds summary.json (the
# trainer writes it when a run finishes) is skipped. A failed run does not stop the others (the
# status is then 1). Last, launch/sweep_summary.py tabulates <runs root>/<sweep name>/.
#   --jobs-only      print the launch command of every unfinished run, one per line, for a
#                    cluster scheduler, instead of running them
#   --runs-root DIR  where sweeps go (default runs, or SPARSERING_RUNS_ROOT)
# Environment: SPARSERING_BIN (default build/sparsering) and what launch/train.sh reads.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SPARSERING_BIN:-$root/build/sparsering}
fail() { echo "sweep.sh: error: $*" >&2; exit 2; }

sweep_file='' jobs_only=false runs_root=${SPARSERING_RUNS_ROOT:-runs}
while [ $# -gt 0 ]; do
  case $1 in
    --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --jobs-only) jobs_only=true ;;
    --runs-root) [ $# -ge 2 ] || fail "--runs-root needs a directory"; runs_root=$2; shift ;;
    -*) fail "unknown option '$1'; see launch/sweep.sh --help" ;;
    *)
      [ -z "$sweep_file" ] || fail "one sweep file only ('$sweep_file', then '$1')"
      sweep_file=$1
      ;;
  esac
  shift
done
[ -n "$sweep_file" ] || fail "give a sweep file, e.g. configs/sweeps/tiny_layouts.pbtxt"
[ -f "$sweep_file" ] || fail "$sweep_file: sweep file not found; check the path"
[ -x "$bin" ] || fail "$bin not built; run launch/setup.sh first"

# Absolute paths, so the printed jobs run from any directory.
sweep_file=$(realpath "$sweep_file")
runs_root=$(realpath -m "$runs_root")
# The binary expands and validates every run before any starts; its error is the one line.
name=$("$bin" sweep --sweep "$sweep_file" --print-name) || exit 2
lines=$("$bin" sweep --sweep "$sweep_file" --print-runs) || exit 2
mapfile -t runs <<<"$lines"
sweep_dir=$runs_root/$name
if ! $jobs_only; then
  # The sweep as it was expanded, for the record and for sweep_summary.py's run order.
  mkdir -p "$sweep_dir"
  cp "$sweep_file" "$sweep_dir/sweep.pbtxt"
  printf '%s\n' "$lines" >"$sweep_dir/runs.tsv"
fi

# Without this, Ctrl-C would end only the current run (mpirun exits normally) and go on.
trap 'echo "sweep.sh: interrupted; run it again to continue" >&2; exit 130' INT TERM
skipped=0 failed=() total=${#runs[@]} index=0
for line in "${runs[@]}"; do
  index=$((index + 1))
  IFS=$'\t' read -r -a fields <<<"$line"
  run=${fields[0]} ranks=${fields[1]} base=${fields[2]}
  run_dir=$sweep_dir/$run
  if [ -f "$run_dir/summary.json" ]; then
    skipped=$((skipped + 1))
    echo "sweep.sh: [$index/$total] $run: finished before (summary.json), skipped" >&2
    continue
  fi
  command=("$root/launch/train.sh" "$base" --run-dir "$run_dir" --resume auto)
  for override in "${fields[@]:3}"; do command+=(--set "$override"); done
  if $jobs_only; then
    [ -n "${SPARSERING_BIN:-}" ] && printf 'SPARSERING_BIN=%q ' "$(realpath "$SPARSERING_BIN")"
    printf '%q ' "${command[@]}" | sed 's/ $//'
    echo
    continue
  fi
  echo "==> [$index/$total] $run ($ranks ranks) -> $run_dir"
  mkdir -p "$run_dir"
  # stdin from /dev/null: mpirun forwards stdin to rank 0.
  if ! "${command[@]}" </dev/null 2>&1 | tee -a "$run_dir/sweep.log"; then
    failed+=("$run")
    echo "sweep.sh: [$index/$total] $run failed; its output is in $run_dir/sweep.log" >&2
  fi
done
$jobs_only && exit 0

python=python3
[ -x "$root/.venv/bin/python3" ] && python=$root/.venv/bin/python3
"$python" "$root/launch/sweep_summary.py" "$sweep_dir"
if [ ${#failed[@]} -gt 0 ]; then
  echo "sweep.sh: error: ${#failed[@]} of $total runs failed: ${failed[*]}" >&2
  exit 1
fi
echo "sweep.sh: all $total runs of $name finished ($skipped before); see $sweep_dir/summary.md"

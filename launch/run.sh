#!/usr/bin/env bash
# Runs a `sparsering` command under mpirun with the number of ranks the config needs (dp x cp):
#
#   launch/run.sh COMMAND CONFIG [options of the command]
#   e.g. launch/run.sh eval configs/tiny.pbtxt --run-dir runs/x --checkpoint auto
#
# COMMAND is train, eval, import-hf or export-hf (launch/train.sh is `run.sh train`). Works as
# root too (adds --allow-run-as-root). Single node: one rank per GPU, or CPU ranks when there is
# no GPU. Multi-node: set HOSTFILE to an Open MPI hostfile ("node1 slots=8" per line); ranks fill
# each node's slots in order, so a context-parallel group stays inside a node when cp <= GPUs per
# node. Environment:
#   SPARSERING_BIN      the binary (default build/sparsering)
#   HOSTFILE            Open MPI hostfile for multi-node runs
#   NETWORK_INTERFACE   network interface for NCCL and MPI traffic (e.g. ib0, eth0)
#   MPIRUN_ARGS         extra mpirun arguments
#   PYTORCH_CUDA_ALLOC_CONF  CUDA allocator settings (default expandable_segments:True)
# Exit status: sparsering's (0, 2 for bad input, 1 otherwise); 130 / 143 after SIGINT / SIGTERM.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SPARSERING_BIN:-$root/build/sparsering}
if [ $# -lt 2 ] || [ "$1" = "--help" ]; then
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
command=$1
config=$2
shift 2
case $command in
  train | eval | import-hf | export-hf) ;;
  *) echo "run.sh: error: unknown command '$command'; use train, eval, import-hf or export-hf" >&2; exit 2 ;;
esac
[ -f "$config" ] || { echo "run.sh: error: $config: config file not found; give a .pbtxt path" >&2; exit 2; }
[ -x "$bin" ] || { echo "run.sh: error: $bin not built; run launch/setup.sh first" >&2; exit 2; }

# The overrides change the world size too (--set parallel.context_parallel_size=4).
overrides=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [ "${args[i]}" = "--set" ] && [ $((i + 1)) -lt ${#args[@]} ]; then
    overrides+=(--set "${args[i + 1]}")
  fi
done
ranks=$("$bin" world-size --config "$config" "${overrides[@]}") || exit 2

mpirun_args=(-np "$ranks")
[ "$(id -u)" -eq 0 ] && mpirun_args+=(--allow-run-as-root)
if [ -n "${HOSTFILE:-}" ]; then
  mpirun_args+=(--hostfile "$HOSTFILE" --map-by slot --bind-to none)
else
  cores=$(nproc)
  # CPU runs may have more ranks than cores; GPU runs bind one rank per GPU by local rank.
  [ "$ranks" -gt "$cores" ] && mpirun_args+=(--oversubscribe)
  mpirun_args+=(--bind-to none)
  threads=$(( cores / ranks ))
  [ "$threads" -lt 1 ] && threads=1
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}
fi
if [ -n "${NETWORK_INTERFACE:-}" ]; then
  export NCCL_SOCKET_IFNAME=$NETWORK_INTERFACE
  mpirun_args+=(--mca btl_tcp_if_include "$NETWORK_INTERFACE" --mca oob_tcp_if_include "$NETWORK_INTERFACE")
fi
# Long contexts allocate buffers of many sizes: growable segments keep the caching allocator from
# fragmenting (a 1B model at 256K tokens ran out of memory with 8.5 GB reserved but unused).
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
for var in OMP_NUM_THREADS NCCL_SOCKET_IFNAME NCCL_DEBUG NCCL_NVLS_ENABLE CUDA_VISIBLE_DEVICES \
           PYTORCH_CUDA_ALLOC_CONF; do
  [ -n "${!var:-}" ] && mpirun_args+=(-x "$var")
done

# One error line: after sparsering has said what went wrong (its "sparsering: error" or
# "interrupted" line), Open MPI's framed notices about the abort or the exit status add nothing,
# and each rank that saw the same error says it once at most. Other framed notices (a launch
# failure, a crash without a sparsering line) pass through.
filter_mpi_notices() {
  awk '
    /^-----------------------------+$/ {
      if (!inside) { inside = 1; block = $0 "\n"; next }
      inside = 0; block = block $0 "\n"
      # sparsering always prints its reason before it calls MPI_Abort, but Open MPI may print
      # its notice first; the exit notices come at the end, after the output of every rank.
      if (!(block ~ /MPI_ABORT was invoked/ || (said && block ~ /non-zero exit code|non-zero status|exited on signal|noticed that process/))) {
        printf "%s", block; fflush()
      }
      next
    }
    inside { block = block $0 "\n"; next }
    /help message help-mpi-api.txt \/ mpi-abort|orte_base_help_aggregate|ORTE_ERROR_LOG.*show_help/ { next }
    /help message help-/ { if (said) next }
    /^sparsering: (error|interrupted)/ { said = 1; if (seen[$0]++) next }
    { print; fflush() }
    END { if (inside) printf "%s", block }'
}

# mpirun runs in the background so that SIGINT / SIGTERM reach it (and through it every rank)
# while this script waits; the ranks print the "interrupted" line. The filter ignores both
# signals (Ctrl-C reaches the whole process group), so it passes that line on and ends with EOF.
set +e
# Job control puts mpirun in a process group of its own: a Ctrl-C to this script's group reaches
# it only through the trap below, as SIGTERM, which it passes to every rank (its own SIGINT
# handling kills the ranks before they can say anything).
set -m
# shellcheck disable=SC2086
mpirun "${mpirun_args[@]}" ${MPIRUN_ARGS:-} "$bin" "$command" --config "$config" "$@" \
  2> >(trap '' INT TERM; filter_mpi_notices >&2) &
mpirun_pid=$!
interrupted=0
trap 'interrupted=130; kill -TERM "$mpirun_pid" 2>/dev/null' INT
trap 'interrupted=143; kill -TERM "$mpirun_pid" 2>/dev/null' TERM
while :; do
  wait "$mpirun_pid"
  status=$?
  kill -0 "$mpirun_pid" 2>/dev/null || break
done
wait  # the stderr filter's last lines
[ "$interrupted" -ne 0 ] && exit "$interrupted"
exit "$status"

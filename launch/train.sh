#!/usr/bin/env bash
# Runs `sparsering train` under mpirun with the number of ranks the config needs (dp x cp).
#
#   launch/train.sh CONFIG [--set field=value ...] [--run-dir DIR]
#
# Single node: one rank per GPU, or CPU ranks when there is no GPU. Multi-node: set HOSTFILE to an
# Open MPI hostfile ("node1 slots=8" per line); ranks fill each node's slots in order, so a
# context-parallel group stays inside a node when cp <= GPUs per node. Environment:
#   SPARSERING_BIN      the binary (default build/sparsering)
#   HOSTFILE            Open MPI hostfile for multi-node runs
#   NETWORK_INTERFACE   network interface for NCCL and MPI traffic (e.g. ib0, eth0)
#   MPIRUN_ARGS         extra mpirun arguments
#   PYTORCH_CUDA_ALLOC_CONF  CUDA allocator settings (default expandable_segments:True)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SPARSERING_BIN:-$root/build/sparsering}
if [ $# -lt 1 ] || [ "$1" = "--help" ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
config=$1
shift
[ -f "$config" ] || { echo "train.sh: error: $config: config file not found; give a .pbtxt path" >&2; exit 2; }
[ -x "$bin" ] || { echo "train.sh: error: $bin not built; run launch/setup.sh first" >&2; exit 2; }

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
# shellcheck disable=SC2086
exec mpirun "${mpirun_args[@]}" ${MPIRUN_ARGS:-} "$bin" train --config "$config" "$@"

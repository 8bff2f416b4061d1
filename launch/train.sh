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
# Exit status: sparsering's (0, 2 for bad input, 1 otherwise); 130 / 143 after SIGINT / SIGTERM.
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "--help" ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
exec "$(dirname "${BASH_SOURCE[0]}")/run.sh" train "$@"

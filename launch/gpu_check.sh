#!/usr/bin/env bash
# On a GPU machine: build once, run the GPU tests and the benchmarks, print a short table last.
# Logs and JSON go to $OUT (the device tool's output folder) or gpu-check/ here.
#   launch/gpu_check.sh [bench lengths, default 16384,32768,131072]
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/gpu-check}
build=${SPARSERING_BUILD_DIR:-$root/build-gpu}
lengths=${1:-16384,32768,131072}
mkdir -p "$out"
python=$( [ -x "$root/.venv/bin/python3" ] && echo "$root/.venv/bin/python3" || echo python3 )
generator=$(command -v ninja >/dev/null && echo Ninja || echo "Unix Makefiles")
status=()

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
echo "== configure + build ($generator)"
start=$(date +%s)
if cmake -S "$root" -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
     -DSPARSERING_PYTHON="$python" >"$out/build.log" 2>&1 &&
   cmake --build "$build" -j "$(nproc)" >>"$out/build.log" 2>&1; then
  status+=("build|ok|$(( $(date +%s) - start )) s")
else
  tail -40 "$out/build.log"
  echo "build failed"; exit 1
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "== GPU tests"
if "$build/tests/gpu_tests" >"$out/gpu_tests.log" 2>&1; then
  status+=("gpu_tests|ok|$(grep -c '^\[       OK' "$out/gpu_tests.log") passed")
else
  status+=("gpu_tests|FAILED|see gpu_tests.log")
  grep -E "Failure|Expected|actual|FAILED|error" "$out/gpu_tests.log" | head -40
fi

gpus=$(nvidia-smi -L | wc -l)
if [ "$gpus" -ge 2 ]; then
  echo "== ring tests on 2 GPUs (NCCL)"
  if SPARSERING_TEST_DEVICE=cuda mpirun -np 2 "$build/tests/ring_attention_mpi_test" \
       >"$out/ring_gpu_tests.log" 2>&1; then
    status+=("ring_tests_2gpu|ok|")
  else
    status+=("ring_tests_2gpu|FAILED|see ring_gpu_tests.log")
    grep -E "Failure|Expected|actual|FAILED|error" "$out/ring_gpu_tests.log" | head -40
  fi
fi

echo "== attention benchmark ($lengths)"
if "$build/bench/attention_bench" --lengths "$lengths" --json "$out/attention_bench.json" \
     >"$out/attention_bench.txt" 2>&1; then
  status+=("attention_bench|ok|attention_bench.json")
else
  status+=("attention_bench|FAILED|see attention_bench.txt")
fi
cat "$out/attention_bench.txt"

# Training runs of the ~1B model on this GPU: "KIND:TOKENS:STEPS[:profile]" items.
train_runs=${TRAIN_RUNS:-"DENSE:32768:5 SPARSE:32768:5:profile"}
export SPARSERING_BIN="$build/sparsering"
: >"$out/train.log"
for spec in $train_runs; do
  IFS=: read -r kind tokens steps profile <<<"$spec"
  name="train_1b_${kind,,}_$((tokens / 1024))k"
  echo "== $name" | tee -a "$out/train.log"
  extra=()
  [ "$profile" = profile ] && extra+=(--profile --set profiling.start_step=2 \
                                     --set "profiling.num_steps=$((steps - 1))")
  if "$root/launch/train.sh" "$root/configs/llama_1b.pbtxt" --set attention.kind="$kind" \
       --set train.sequence_length="$tokens" --set train.steps="$steps" "${extra[@]}" \
       --run-dir "/tmp/$name" >>"$out/train.log" 2>&1; then
    last=$(grep '^step' "$out/train.log" | tail -1)
    status+=("$name|ok|${last#*|}")
  else
    status+=("$name|FAILED|see train.log")
    tail -5 "$out/train.log"
  fi
done

echo
echo "== summary"
printf '%-18s %-8s %s\n' step result note
for row in "${status[@]}"; do
  IFS='|' read -r name result note <<<"$row"
  printf '%-18s %-8s %s\n' "$name" "$result" "$note"
done

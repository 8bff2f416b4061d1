#!/usr/bin/env bash
# On a GPU machine: build once, run the GPU tests and the benchmarks, print a short table last.
# Logs and JSON go to $OUT when it is set, else gpu-check/ here.
#   launch/gpu_check.sh [bench lengths, default 16384,32768,131072]
# Environment: TRAIN_RUNS (1B training runs, below; "" for none), QUALITY=TOKENS:STEPS (dense vs
# sparse quality check), BENCH=0 (skip the attention benchmarks), FLEX=0 (skip FlexAttention),
# HD64=0 (skip the head-dim-64 attention benchmark),
# HOST_ADAMW=0 (skip the host AdamW benchmark),
# TESTS=0 (skip the GPU tests: a second call on a warm machine that only measures),
# MODEL_STATE=1b,3b,8b (sharded state and offload; MODEL_STATE_ONLY=131072,longest runs only those
# context lengths, MODEL_STATE_KINDS=sparse only those attention kinds),
# HF_FAMILY=1 (families against transformers),
# QUALITY_SETTING=default (the quality protocol, launch/quality.sh).
# BUILD_TARGETS=sparsering builds only those targets (with TESTS=0 BENCH=0 HOST_ADAMW=0: a call
# that runs only the trainer, e.g. MODEL_STATE or QUALITY_SETTING).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/gpu-check}
build=${SPARSERING_BUILD_DIR:-$root/build-gpu}
lengths=${1:-16384,32768,131072}
mkdir -p "$out"
python=$( [ -x "$root/.venv/bin/python3" ] && echo "$root/.venv/bin/python3" || echo python3 )
generator=$(command -v ninja >/dev/null && echo Ninja || echo "Unix Makefiles")
status=()

# Files that land in $out: attention_bench.{txt,json} (the host AdamW and loss tables appended),
# attention_bench_hd64.{txt,json},
# flex_attention_bench.json, host_adamw_bench.json, cross_entropy_bench.json, gpu_tests.log,
# train.log, quality.log, ring_gpu_tests.log, and the model-state, family and quality-protocol
# outputs below (quality_report.md, quality_report.json, quality_eval.json, quality_plots/).
if [ -n "${BUILD_TARGETS:-}" ] &&
   { [ "${TESTS:-1}" = 1 ] || [ "${BENCH:-1}" = 1 ] || [ "${HOST_ADAMW:-1}" = 1 ]; }; then
  echo "BUILD_TARGETS builds only the trainer: pass TESTS=0 BENCH=0 HOST_ADAMW=0 with it"; exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== configure + build ($generator)"
start=$(date +%s)
build_log=$(mktemp)
if cmake -S "$root" -B "$build" -G "$generator" -DCMAKE_BUILD_TYPE=Release \
     -DSPARSERING_PYTHON="$python" >"$build_log" 2>&1 &&
   cmake --build "$build" -j "$(nproc)" ${BUILD_TARGETS:+--target $BUILD_TARGETS} \
     >>"$build_log" 2>&1; then
  status+=("build|ok|$(( $(date +%s) - start )) s")
else
  cp "$build_log" "$out/build.log"
  tail -40 "$build_log"
  echo "build failed"; exit 1
fi

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
gpus=$(nvidia-smi -L | wc -l)
if [ "${TESTS:-1}" = 1 ]; then
echo "== GPU tests"
if "$build/tests/gpu_tests" >"$out/gpu_tests.log" 2>&1; then
  status+=("gpu_tests|ok|$(grep -c '^\[       OK' "$out/gpu_tests.log") passed")
else
  status+=("gpu_tests|FAILED|see gpu_tests.log")
  grep -E "Failure|Expected|actual|FAILED|error" "$out/gpu_tests.log" | head -40
fi

if [ "$gpus" -ge 2 ]; then
  echo "== ring tests on 2 GPUs (NCCL)"
  if SPARSERING_TEST_DEVICE=cuda mpirun -np 2 ${NCCL_NVLS_ENABLE:+-x NCCL_NVLS_ENABLE} \
       "$build/tests/ring_attention_mpi_test" \
       >"$out/ring_gpu_tests.log" 2>&1; then
    status+=("ring_tests_2gpu|ok|")
  else
    status+=("ring_tests_2gpu|FAILED|see ring_gpu_tests.log")
    grep -E "Failure|Expected|actual|FAILED|error" "$out/ring_gpu_tests.log" | head -40
  fi
fi
fi

patterns=$(mktemp -d)
if [ "${BENCH:-1}" = 1 ]; then
echo "== attention benchmark ($lengths)"
if "$build/bench/attention_bench" --lengths "$lengths" --json "$out/attention_bench.json" \
     --pattern-dir "$patterns" >"$out/attention_bench.txt" 2>&1; then
  status+=("attention_bench|ok|attention_bench.json")
else
  status+=("attention_bench|FAILED|see attention_bench.txt")
fi
cat "$out/attention_bench.txt"

# FlexAttention on the same masks (its own Python process: torch.compile + Triton).
if [ "${FLEX:-1}" = 1 ]; then
  echo "== FlexAttention on the same masks"
  if "$python" "$root/bench/flex_attention_bench.py" --pattern-dir "$patterns" \
       --lengths "$lengths" --ours "$out/attention_bench.json" \
       --json "$out/flex_attention_bench.json" >"$patterns/flex.txt" 2>&1; then
    status+=("flex_attention_bench|ok|flex_attention_bench.json")
  else
    status+=("flex_attention_bench|FAILED|see attention_bench.txt")
  fi
  tee -a "$out/attention_bench.txt" <"$patterns/flex.txt" | grep -v "^ *$" | tail -8
fi
fi

# Head dim 64 (the 1B config's) at 128K against cuDNN and FlashAttention-2 in the same run: the
# 128-token-block rows run wgmma forward and backward, the *_block64 rows the wgmma forward and
# the mma.sync backward (HD64=0 skips it).
if [ "${BENCH:-1}" = 1 ] && [ "${HD64:-1}" = 1 ]; then
  echo "== attention benchmark, head dim 64 (131072)"
  if "$build/bench/attention_bench" --lengths 131072 --head-dim 64 \
       --json "$out/attention_bench_hd64.json" >"$out/attention_bench_hd64.txt" 2>&1; then
    status+=("attention_bench_hd64|ok|attention_bench_hd64.json")
  else
    status+=("attention_bench_hd64|FAILED|see attention_bench_hd64.txt")
  fi
  cat "$out/attention_bench_hd64.txt"
fi

# The offloaded optimizer's host AdamW on this machine's CPU (a 268M-element slice, all threads).
if [ "${HOST_ADAMW:-1}" = 1 ]; then
echo "== host AdamW (optimizer.offload: CPU)"
if "$build/bench/host_adamw_bench" --elements 268435456 --json "$out/host_adamw_bench.json" \
     >"$patterns/host_adamw.txt" 2>&1; then
  status+=("host_adamw_bench|ok|$(grep fused "$patterns/host_adamw.txt" | awk '{print $NF}') vs torch ops")
else
  status+=("host_adamw_bench|FAILED|see attention_bench.txt")
fi
tee -a "$out/attention_bench.txt" <"$patterns/host_adamw.txt"
fi

# The output-projection loss: the cross-entropy row kernel against torch ops (64K tokens, the
# quality model's 16K vocabulary at hidden 512 and Llama 3's 128K at hidden 4096).
if [ "${BENCH:-1}" = 1 ]; then
echo "== output-projection loss"
if "$build/bench/cross_entropy_bench" --json "$out/cross_entropy_bench.json" \
     >"$patterns/cross_entropy.txt" 2>&1; then
  status+=("cross_entropy_bench|ok|$(awk '$1 ~ /^[0-9]+$/ {printf "%s%s", sep, $NF; sep=", "}' \
    "$patterns/cross_entropy.txt") vs torch ops")
else
  status+=("cross_entropy_bench|FAILED|see attention_bench.txt")
fi
tee -a "$out/attention_bench.txt" <"$patterns/cross_entropy.txt"
fi

# Training runs of the ~1B model on this GPU: "KIND:TOKENS:STEPS[:FLAGS]" items, FLAGS a
# comma-separated list of: profile (--profile over the steps after the first), full (profile plus
# N:M 2:4 MDGF masks on the MLP, checkpoints every 2 steps and TensorBoard), ours (dense steps on
# our kernel instead of cuDNN), abs (absolute pattern budgets, 2048 columns and 64 diagonals per
# head, instead of the config's fractions of the context), cpN (context parallelism over N GPUs of
# this machine: N ranks, one GPU each; TOKENS is the whole sequence), zigzag (zigzag token layout
# instead of the config's balanced one: every dense ring step then runs on cuDNN), nockpt (no
# activation checkpointing: for contexts whose activations fit), block128 (128-token attention
# blocks instead of the config's 64).
train_runs=${TRAIN_RUNS-"DENSE:32768:5 SPARSE:32768:5:profile"}  # TRAIN_RUNS="" runs none
export SPARSERING_BIN="$build/sparsering"
: >"$out/train.log"
for spec in $train_runs; do
  IFS=: read -r kind tokens steps flags <<<"$spec"
  name="train_1b_${kind,,}_$((tokens / 1024))k${flags:+_${flags//,/_}}"
  echo "== $name" | tee -a "$out/train.log"
  extra=()
  for flag in ${flags//,/ }; do
    case $flag in
      profile | full)
        extra+=(--profile --set profiling.start_step=2 --set "profiling.num_steps=$((steps - 1))")
        ;;&
      full)
        extra+=(--set nm_sparsity.enabled=true --set nm_sparsity.n=2 --set nm_sparsity.m=4
                --set "nm_sparsity.layers=gate_proj,up_proj,down_proj"
                --set nm_sparsity.mode=MDGF_LINEAR --set nm_sparsity.kappa=0.01
                --set checkpoint.every_steps=2 --set checkpoint.keep_last=2
                --set logging.tensorboard=true) ;;
      ours) extra+=(--set attention.dense_kernel=SPARSERING) ;;
      abs) extra+=(--set attention.vertical_fraction=0 --set attention.vertical_budget=2048
                   --set attention.slash_fraction=0 --set attention.slash_budget=64) ;;
      nockpt) extra+=(--set model.activation_checkpointing=false) ;;
      zigzag) extra+=(--set parallel.layout=ZIGZAG) ;;
      block128) extra+=(--set attention.block_size=128) ;;
      cp[0-9]*) extra+=(--set "parallel.context_parallel_size=${flag#cp}") ;;
      profile) ;;
      *) echo "gpu_check: unknown TRAIN_RUNS flag '$flag' in $spec"; exit 2 ;;
    esac
  done
  if "$root/launch/train.sh" "$root/configs/llama_1b.pbtxt" --set attention.kind="$kind" \
       --set train.sequence_length="$tokens" --set train.steps="$steps" "${extra[@]}" \
       --run-dir "/tmp/$name" >>"$out/train.log" 2>&1; then
    last=$(grep -E '^step +[0-9]+/' "$out/train.log" | tail -1)
    note=${last#*|}
    if [[ " $flags " == *full* ]]; then
      checkpoints=$(find "/tmp/$name/checkpoints" -maxdepth 1 -name '*step*' | wc -l)
      events=$(find "/tmp/$name/tensorboard" -maxdepth 1 -name '*tfevents*' | wc -l)
      note="$note | $checkpoints checkpoints, $events event file(s)"
    fi
    status+=("$name|ok|$note")
    rm -rf "/tmp/$name/checkpoints"  # a 1B checkpoint is ~15 GB: keep the disk for the next run
  else
    status+=("$name|FAILED|see train.log")
    tail -5 "$out/train.log"
  fi
done

# Quality at small scale: the same small model trained with dense and with sparse attention on
# the long-range copy task (configs/quality_copy.pbtxt), then evaluated with the attention it trained with ("QUALITY=TOKENS:STEPS").
if [ -n "${QUALITY:-}" ]; then
  IFS=: read -r tokens steps <<<"$QUALITY"
  : >"$out/quality.log"
  for kind in DENSE SPARSE; do
    run_dir="/tmp/quality_${kind,,}"
    common=(--set "train.sequence_length=$tokens"
            --set "model.max_context=$tokens" --set attention.kind="$kind")
    echo "== quality $kind $tokens tokens, $steps steps" | tee -a "$out/quality.log"
    if "$root/launch/train.sh" "$root/configs/quality_copy.pbtxt" "${common[@]}" \
         --set "train.steps=$steps" --set "checkpoint.every_steps=$steps" \
         --run-dir "$run_dir" >>"$out/quality.log" 2>&1 &&
       "$build/sparsering" eval --config "$root/configs/quality_copy.pbtxt" "${common[@]}" \
         --run-dir "$run_dir" --checkpoint auto --attention "${kind,,}" --eval-sequences 4 \
         >>"$out/quality.log" 2>&1; then
      cat "$run_dir/eval.json" >>"$out/quality.log"
      status+=("quality_${kind,,}|ok|$(grep -E '^step +[0-9]+/' "$out/quality.log" | tail -1 |
                                      cut -d'|' -f2)")
    else
      status+=("quality_${kind,,}|FAILED|see quality.log")
      tail -5 "$out/quality.log"
    fi
  done
fi

# Hugging Face families against transformers in bf16 (bench/hf_family_gpu.py): HF_FAMILY=1.
if [ "${HF_FAMILY:-0}" = 1 ]; then
  echo "== Hugging Face families"
  if "$python" "$root/bench/hf_family_gpu.py" --binary "$build/sparsering" \
       --lengths "${HF_LENGTHS:-32768,131072}" --json "$out/hf_family_gpu.json"; then
    status+=("hf_family|ok|hf_family_gpu.json")
  else
    status+=("hf_family|FAILED|see the output above")
  fi
fi

# Sharded model state on this GPU (bench/model_state_gpu.py): MODEL_STATE="1b,3b,8b" or a subset.
if [ -n "${MODEL_STATE:-}" ]; then
  echo "== model state ($MODEL_STATE)"
  if "$python" "$root/bench/model_state_gpu.py" --binary "$build/sparsering" --suite "$MODEL_STATE" \
       --only "${MODEL_STATE_ONLY:-}" --kinds "${MODEL_STATE_KINDS:-}" \
       --json "$out/model_state_gpu.json" --log "$out/model_state_gpu.log"; then
    status+=("model_state|ok|model_state_gpu.json")
  else
    status+=("model_state|FAILED|see model_state_gpu.log")
  fi
fi

# The quality protocol (launch/quality.sh): QUALITY_SETTING=default (or large, ci).
if [ -n "${QUALITY_SETTING:-}" ]; then
  echo "== quality protocol ($QUALITY_SETTING)"
  if SPARSERING_BIN="$build/sparsering" PYTHON="$python" "$root/launch/quality.sh" \
       --setting "$QUALITY_SETTING" >"$out/quality_protocol.log" 2>&1; then
    status+=("quality_protocol|ok|report.md")
  else
    status+=("quality_protocol|FAILED|see quality_protocol.log")
    tail -20 "$out/quality_protocol.log"
  fi
  quality_dir=$root/runs/quality/$(basename "$QUALITY_SETTING" .env)  # quality.sh's default --out
  if [ -f "$quality_dir/report.md" ]; then
    # The report, its JSON, the evaluation and the plots: what bench/RESULTS.md quotes.
    cp "$quality_dir/report.md" "$out/quality_report.md"
    for file in report.json eval.json; do
      [ -f "$quality_dir/$file" ] && cp "$quality_dir/$file" "$out/quality_$file"
    done
    [ -d "$quality_dir/plots" ] && cp -r "$quality_dir/plots" "$out/quality_plots"
    cat "$quality_dir/report.md"
  fi
fi

echo
echo "== summary"
printf '%-18s %-8s %s\n' step result note
for row in "${status[@]}"; do
  IFS='|' read -r name result note <<<"$row"
  printf '%-18s %-8s %s\n' "$name" "$result" "$note"
done

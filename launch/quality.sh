#!/usr/bin/env bash
# Quality under sparsity: corpus -> pretrain at 4K -> extend to 32K three ways (and dense once more
# on another data order) -> evaluate -> table.
#
#   launch/quality.sh [--setting default|large|ci|FILE.env] [--out DIR] [--stage STAGE]...
#
# Stages, in order (default: all; finished ones are skipped, interrupted training resumes from
# its newest checkpoint, so a setting can run in parts):
#   corpus     text and code of this machine -> BPE, token shards, held-out split, file list + hash
#   pretrain   dense attention at 4K tokens (configs/quality/pretrain.pbtxt)
#   dense sparse sparse_nm
#              the pretrained weights extended to EXTEND_LENGTH with a raised rope_theta: the dense
#              ring, sparse vertical-slash, sparse + N:M 2:4 on the MLP (configs/quality/extend.pbtxt)
#   dense_replica
#              the dense ring again with another train.seed (another draw and order of the
#              extension's sequences): the spread of two equally good runs, against which the
#              sparse runs' gaps to dense are read
#   eval       every checkpoint exported with export-hf and measured by launch/quality_eval.py
#   report     tables (stdout, DIR/report.md) and plots (DIR/plots) by launch/quality_report.py
# Settings are configs/quality/<name>.env (default: one GPU, under 9 minutes on one H100).
# Output: DIR (default runs/quality/<setting>): corpus/, runs/<run>/, hf/<run>/, eval.json,
# report.md, plots/. Environment: SPARSERING_BIN (default build/sparsering), PYTHON (default
# .venv/bin/python3), MPIRUN_ARGS.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SPARSERING_BIN:-$root/build/sparsering}
python=$(command -v "${PYTHON:-$root/.venv/bin/python3}" || true)
all_stages=(corpus pretrain dense sparse sparse_nm dense_replica eval report)
# The replica's seed; the config's train.seed (1234 by default) seeds the other runs.
replica_seed=4321

fail() {
  echo "quality.sh: error: $*" >&2
  exit 2
}

setting=default out="" stages=()
while [ $# -gt 0 ]; do
  case $1 in
    --setting) [ $# -ge 2 ] || fail "--setting needs a value"; setting=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || fail "--out needs a value"; out=$2; shift 2 ;;
    --stage)
      [ $# -ge 2 ] || fail "--stage needs a value"
      [[ " ${all_stages[*]} " == *" $2 "* ]] || fail "--stage $2: one of ${all_stages[*]}"
      stages+=("$2"); shift 2 ;;
    --help|-h) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) fail "unknown option '$1'; see --help" ;;
  esac
done
[ ${#stages[@]} -gt 0 ] || stages=("${all_stages[@]}")

if [ -f "$setting" ]; then
  setting_file=$setting
  setting=$(basename "$setting" .env)
else
  setting_file=$root/configs/quality/$setting.env
  [ -f "$setting_file" ] || fail "--setting $setting: no $setting_file; give default, large, ci or an .env file"
fi
CORPUS_MAX_MB="" CORPUS_ARGS="" RETRIEVAL_FRACTION="" PRETRAIN_RETRIEVAL_FRACTION=""
PRETRAIN_CONFIG="" EXTEND_CONFIG="" COMMON_SET="" PRETRAIN_SET="" EXTEND_SET="" PRETRAIN_LENGTH=""
EXTEND_LENGTH="" EXTEND_ROPE_THETA="" EVAL_ARGS=""
# shellcheck disable=SC1090
source "$setting_file"
for var in CORPUS_MAX_MB RETRIEVAL_FRACTION PRETRAIN_RETRIEVAL_FRACTION PRETRAIN_CONFIG \
           EXTEND_CONFIG PRETRAIN_LENGTH EXTEND_LENGTH EXTEND_ROPE_THETA EVAL_ARGS; do
  [ -n "${!var}" ] || fail "$setting_file: $var is not set"
done
out=${out:-$root/runs/quality/$setting}
[ -x "$bin" ] || fail "$bin not built; run launch/setup.sh first"
[ -n "$python" ] && [ -x "$python" ] || fail "${PYTHON:-$root/.venv/bin/python3} not found; run launch/setup.sh first (or set PYTHON)"
cd "$root"

start=$SECONDS
corpus=$out/corpus
mkdir -p "$out/runs" "$out/hf"

progress() {
  printf '== quality [%s, %dm%02ds] %s\n' "$setting" $(((SECONDS - start) / 60)) \
    $(((SECONDS - start) % 60)) "$*"
}

# --set arguments of a space-separated override list.
sets() {
  local item
  for item in $1; do printf -- '--set\n%s\n' "$item"; done
}

# Config and overrides of a run, one argument per line: pretrain or an extension run.
run_args() {
  local run=$1
  if [ "$run" = pretrain ]; then
    printf -- '--config\n%s\n' "$PRETRAIN_CONFIG"
    printf -- '--set\n%s\n' "data.path=$corpus/pretrain" "train.sequence_length=$PRETRAIN_LENGTH"
    sets "$COMMON_SET"
    sets "$PRETRAIN_SET"
    return
  fi
  printf -- '--config\n%s\n' "$EXTEND_CONFIG"
  printf -- '--set\n%s\n' "data.path=$corpus/extend" "train.sequence_length=$EXTEND_LENGTH" \
    "model.max_context=$EXTEND_LENGTH" "model.rope_theta=$EXTEND_ROPE_THETA"
  sets "$COMMON_SET"
  sets "$EXTEND_SET"
  case $run in
    sparse) printf -- '--set\nattention.kind=SPARSE\n' ;;
    sparse_nm) printf -- '--set\n%s\n' attention.kind=SPARSE nm_sparsity.enabled=true ;;
    dense_replica) printf -- '--set\ntrain.seed=%s\n' "$replica_seed" ;;
  esac
}

# mpirun with as many ranks as the run's config needs, for one sparsering command.
sparsering() {
  local command=$1 run=$2
  shift 2
  local args ranks
  mapfile -t args < <(run_args "$run")
  ranks=$("$bin" world-size "${args[@]}") || exit 2
  local mpi=(-np "$ranks" --bind-to none)
  [ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
  [ "$ranks" -gt "$(nproc)" ] && mpi+=(--oversubscribe)
  # shellcheck disable=SC2086
  mpirun "${mpi[@]}" ${MPIRUN_ARGS:-} "$bin" "$command" "${args[@]}" "$@"
}

train() {
  local run=$1 args
  mapfile -t args < <(run_args "$run")
  # An extension run's config names its model; launch/train.sh sizes the job from it.
  "$root/launch/train.sh" "${args[1]}" "${args[@]:2}" --run-dir "$out/runs/$run" --resume auto
}

finished() {  # the run reached its configured steps (the trainer writes summary.json then)
  [ -f "$out/runs/$1/summary.json" ]
}

export_hf() {  # the run's newest checkpoint -> out/hf/<run>, unless already exported
  local run=$1
  local latest
  latest=$(cat "$out/runs/$run/checkpoints/latest" 2>/dev/null) || fail "$run has no checkpoint"
  if [ "$(cat "$out/hf/$run/.exported" 2>/dev/null)" = "$latest" ]; then return; fi
  sparsering export-hf "$run" --checkpoint auto --run-dir "$out/runs/$run" --out "$out/hf/$run"
  echo "$latest" > "$out/hf/$run/.exported"
}

# quality_corpus.py's arguments for this setting, one per line: what builds the corpus and what
# a finished corpus is checked against.
corpus_args() {
  local extra
  read -r -a extra <<< "$CORPUS_ARGS"
  printf '%s\n' --output "$corpus" --max-mb "$CORPUS_MAX_MB" --extend-length "$EXTEND_LENGTH" \
    --retrieval-fraction "$RETRIEVAL_FRACTION" --pretrain-length "$PRETRAIN_LENGTH" \
    --pretrain-retrieval-fraction "$PRETRAIN_RETRIEVAL_FRACTION" "${extra[@]}"
}

# A finished corpus is used only if it was built with this setting's corpus options (the check
# prints one line naming the first difference).
check_corpus_settings() {
  local args
  mapfile -t args < <(corpus_args)
  "$python" "$root/launch/quality_corpus.py" "${args[@]}" --check-existing || exit 2
}

stage_corpus() {
  if [ -f "$corpus/manifest.json" ]; then
    check_corpus_settings
    progress "corpus: done already ($corpus)"
    return
  fi
  progress "corpus: collecting text and code, training the BPE, writing shards"
  local args
  mapfile -t args < <(corpus_args)
  "$python" "$root/launch/quality_corpus.py" "${args[@]}"
}

stage_pretrain() {
  [ -f "$corpus/manifest.json" ] || fail "no corpus in $corpus; run --stage corpus first"
  check_corpus_settings
  if finished pretrain; then progress "pretrain: done already"; return; fi
  progress "pretrain: dense attention, $PRETRAIN_CONFIG"
  train pretrain
}

stage_extend() {
  local run=$1
  finished pretrain || fail "the pretrained model is not finished; run --stage pretrain first"
  if finished "$run"; then progress "$run: done already"; return; fi
  check_corpus_settings
  if [ ! -d "$out/runs/$run/checkpoints" ]; then
    # Weights only: the pretrained checkpoint as a Hugging Face model with the extension's RoPE
    # base, imported as step 0 of the new run (fresh optimizer state and schedule).
    export_hf pretrain
    local init=$out/hf/pretrain_init_$run
    rm -rf "$init"
    cp -r "$out/hf/pretrain" "$init"
    "$python" - "$init/config.json" "$EXTEND_ROPE_THETA" "$EXTEND_LENGTH" <<'PY'
import json, sys
path, theta, length = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
with open(path) as f:
    config = json.load(f)
config["rope_theta"], config["max_position_embeddings"] = theta, length
if isinstance(config.get("rope_parameters"), dict):
    config["rope_parameters"]["rope_theta"] = theta
with open(path, "w") as f:
    json.dump(config, f, indent=2)
PY
    progress "$run: starting from the pretrained weights, rope_theta $EXTEND_ROPE_THETA"
    sparsering import-hf "$run" --hf-dir "$init" --run-dir "$out/runs/$run"
    rm -rf "$init"
  fi
  progress "$run: extension to $EXTEND_LENGTH tokens"
  train "$run"
}

stage_eval() {
  local models=() run
  for run in pretrain dense sparse sparse_nm dense_replica; do
    if finished "$run"; then
      export_hf "$run"
      models+=(--model "$run=$out/hf/$run")
    fi
  done
  [ ${#models[@]} -gt 0 ] || fail "no finished run to evaluate in $out/runs"
  progress "eval: $((${#models[@]} / 2)) models"
  local extra device=cpu
  read -r -a extra <<< "$EVAL_ARGS"
  # Evaluate where the models trained: summary.json has an MFU only for GPU runs.
  if [ -f "$out/runs/pretrain/summary.json" ] &&
     ! grep -q '"mfu_mean": null' "$out/runs/pretrain/summary.json"; then
    device=cuda
  fi
  "$python" "$root/launch/quality_eval.py" --corpus "$corpus" "${models[@]}" --device "$device" \
    --output "$out/eval.json" "${extra[@]}"
}

stage_report() {
  progress "report"
  "$python" "$root/launch/quality_report.py" "$out"
}

for stage in "${stages[@]}"; do
  case $stage in
    corpus) stage_corpus ;;
    pretrain) stage_pretrain ;;
    dense|sparse|sparse_nm|dense_replica) stage_extend "$stage" ;;
    eval) stage_eval ;;
    report) stage_report ;;
  esac
done
progress "finished: ${stages[*]} (outputs in $out)"

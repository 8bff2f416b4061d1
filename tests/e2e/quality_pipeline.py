"""The quality pipeline end to end at CI size (launch/quality.sh --setting ci: a tiny model, a
~1.5 MB corpus of this machine's text and code, 2 CPU ranks): the corpus records its files and
their hash, holds documents out and mixes retrieval sequences into whole pretraining and
extension sequences;
pretraining lowers the loss; each extension run starts from the pretrained weights (its first
loss far below a fresh model's) with the raised rope_theta; sparse runs attend to fewer pairs;
the dense replica trains on another draw of the data (other losses, other perplexity) and the
report reads the sparse runs' perplexity gaps against its spread;
the N:M run exports strict 2:4 MLP weights; eval.json covers every model, task, length and
position bucket; the report has its tables and plots; an interrupted pretraining resumes from
its checkpoint; finished stages are skipped on a rerun;
bad input to every tool is one line and status 2. Also checks the answer scoring on fixed
predictions. Needs tokenizers and transformers (in the running python or the source tree's
.venv); without them, a note and exit 0."""
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time

from e2e_common import arguments, check, environment, temporary_directory

binary, source = arguments()
try:
    import safetensors.torch  # noqa: F401
    import tokenizers  # noqa: F401
    import transformers  # noqa: F401
except ImportError:
    venv_python = os.path.join(source, ".venv", "bin", "python3")
    # A venv's python resolves to its base interpreter, so an environment mark stops a loop.
    if os.path.exists(venv_python) and not os.environ.get("SPARSERING_QUALITY_REEXEC"):
        os.environ["SPARSERING_QUALITY_REEXEC"] = "1"
        os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])
    print("note: tokenizers/transformers are not installed (nor in .venv); skipping")
    print("PASSED")
    sys.exit(0)
python = sys.executable

launch = os.path.join(source, "launch")
sys.path.insert(0, launch)
import quality_tasks  # noqa: E402
from quality_tasks import Sample  # noqa: E402
from quality_eval import score_samples  # noqa: E402

# The training-format probe: every task gives a sequence of exactly the length asked, whose
# scored answers are values its context states (characters as tokens), the last one ending the
# sequence; multi-key needles ask each of their 4 keys here, key-value lookup several keys, the
# repeated block of distinct tokens is scored in items of REPEAT_ITEM_TOKENS.
haystack_text = [ord(c) for c in "lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 60]
expected_items = {"passkey": (1, 1), "multikey": (4, 4),
                  "kv_lookup": (2, quality_tasks.KV_LOOKUP_QUERIES),
                  "repeat": (2, 1500 // quality_tasks.REPEAT_ITEM_TOKENS)}
for task in sorted(quality_tasks.TRAIN_TASKS):
    probe = quality_tasks.probe_sample(task, lambda text: [ord(c) for c in text], haystack_text,
                                       random.Random(task), 1500)
    low, high = expected_items[task]
    check(len(probe.ids) == 1500 and low <= len(probe.items) <= high,
          f"probe {task}: shape ({len(probe.ids)} ids, {len(probe.items)} answers)")
    check(probe.items[-1][-1] == len(probe.ids) - 1, f"probe {task}: the last answer ends it")
    for item in probe.items:
        answer = "".join(chr(probe.ids[p]) for p in item).strip()
        context = "".join(chr(t) for t in probe.ids[:probe.items[0][0]])
        check(answer and answer in context,
              f"probe {task}: answer {answer!r} is not stated before the first question")
# The mix's task weights: every task named once, whole numbers, one weight above zero.
import quality_corpus  # noqa: E402
check(quality_corpus.parse_task_weights("kv_lookup=1,multikey=0,passkey=2,repeat=3") ==
      {"kv_lookup": 1, "multikey": 0, "passkey": 2, "repeat": 3}, "task weights parse")
for bad in ("repeat=2", "kv_lookup=1,multikey=1,passkey=1,repeat=x",
            "kv_lookup=0,multikey=0,passkey=0,repeat=0", "kv_lookup=1,multikey=1,passkey=1,copy=1",
            "kv_lookup=1,multikey=1,passkey=1,repeat=\u00b2",
            "kv_lookup=1,multikey=1,passkey=1,repeat=1,repeat=2"):
    try:
        quality_corpus.parse_task_weights(bad)
        check(False, f"--retrieval-tasks {bad} must be refused")
    except quality_corpus.UserError as error:
        check(str(error).startswith("--retrieval-tasks"), f"{bad}: {error}")

# Scoring on fixed predictions: all items right, one of two wrong, set answers in any order.
ids = [5, 6, 7, 8, 9, 10]
sample = Sample(ids, [[2, 3], [4]])
check(score_samples([sample], [{2: 7, 3: 8, 4: 9}]) == 1.0, "oracle predictions must score 1")
check(score_samples([sample], [{2: 7, 3: 1, 4: 9}]) == 0.5, "one item of two wrong scores 0.5")
words = Sample(ids, [], set_items=([3, 4, 5], {8, 9, 10}))
check(score_samples([words], [{3: 9, 4: 10, 5: 10}]) == 1.0,
      "a set answer may name any target the reference prefix has not given")
check(score_samples([words], [{3: 8, 4: 8, 5: 1}]) == 1 / 3,
      "a set answer repeated or outside the targets is wrong")

env = environment(binary)
env["PYTHON"] = python
env["OMP_NUM_THREADS"] = "1"


def run(command, timeout=600):
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def one_line_error(process, what):
    lines = process.stderr.strip().splitlines()
    check(process.returncode == 2 and len(lines) == 1 and "Traceback" not in process.stderr,
          f"{what}: expected one error line and status 2, got {process.returncode}: "
          f"{process.stderr[-800:]}", process)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


quality = os.path.join(launch, "quality.sh")
with temporary_directory() as tmp:
    out = os.path.join(tmp, "quality")
    # A setting runs in parts: pretraining killed after its step-8 checkpoint (of 16) leaves that
    # checkpoint and no summary, and the next call resumes there instead of starting over.
    env["SPARSERING_FAULT"] = "kill:step:0:12"
    process = run([quality, "--setting", "ci", "--out", out, "--stage", "corpus",
                   "--stage", "pretrain"])
    del env["SPARSERING_FAULT"]
    pretrain_dir = os.path.join(out, "runs", "pretrain")
    with open(os.path.join(pretrain_dir, "checkpoints", "latest")) as f:
        latest = f.read().strip()
    check(process.returncode != 0 and latest.endswith("step_00000008") and
          not os.path.exists(os.path.join(pretrain_dir, "summary.json")),
          f"a pretraining killed at step 12 exited {process.returncode} with latest {latest}",
          process)
    began = time.monotonic()
    process = run([quality, "--setting", "ci", "--out", out])
    seconds = time.monotonic() - began
    print(process.stdout[-3000:])
    check(process.returncode == 0, f"quality.sh exited {process.returncode}", process)
    check("resumed from" in process.stdout and "step_00000008" in process.stdout,
          "the second call did not resume the interrupted pretraining at step 8", process)
    print(f"pipeline: {seconds:.0f} s")

    # Corpus: file list and hash, held-out documents, aligned pretraining and extension sequences.
    corpus = os.path.join(out, "corpus")
    with open(os.path.join(corpus, "manifest.json")) as f:
        manifest = json.load(f)
    with open(os.path.join(corpus, "files.tsv")) as f:
        rows = f.read().split("\n", 1)[1]
    check(hashlib.sha256(rows.encode()).hexdigest() == manifest["files_sha256"],
          "files_sha256 is not the hash of files.tsv")
    check(len(rows.splitlines()) == manifest["files"] > 10, "file count differs from files.tsv")
    splits = [d["split"] for d in manifest["documents"]]
    check(splits.count("heldout") >= 1 and splits.count("train") > splits.count("heldout"),
          f"bad split: {splits}")
    check(manifest["vocab_size"] <= 1024, f"vocabulary {manifest['vocab_size']} > 1024")
    for split, length in (("pretrain", 256), ("extend", 1024)):
        shard = manifest["shards"][split]
        check(shard["tokens"] == shard["sequences"] * length,
              f"{split} shard is not whole {length}-token sequences")
        check(0.10 <= shard["retrieval_token_fraction"] <= 0.20 and
              min(shard["retrieval_sequences"].values()) >= 1,
              f"{split} retrieval mix off: {shard}")

    # Training: pretraining learns; extensions start from it; sparse attends to fewer pairs.
    runs = os.path.join(out, "runs")
    pretrain = metrics(os.path.join(runs, "pretrain"))
    check(len(pretrain) == 16 and pretrain[-1]["loss"] < pretrain[0]["loss"] - 0.2,
          f"pretraining did not learn: {[m['loss'] for m in pretrain]}")
    fresh_loss = math.log(1024)
    for name in ("dense", "sparse", "sparse_nm", "dense_replica"):
        rows = metrics(os.path.join(runs, name))
        check(len(rows) == 4, f"{name}: {len(rows)} steps, expected 4")
        check(rows[0]["loss"] < fresh_loss - 0.5,
              f"{name}: first loss {rows[0]['loss']:.3f} is a fresh model's ({fresh_loss:.3f}): "
              "the pretrained weights were not loaded")
        density = sum(m["attention_density"] for m in rows) / len(rows)
        check((density == 1.0) if name.startswith("dense") else (0 < density < 0.9),
              f"{name}: attention density {density}")
        with open(os.path.join(out, "hf", name, "config.json")) as f:
            config = json.load(f)
        theta = config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta")
        check(theta == 40000, f"{name}: exported rope_theta {theta}, expected 40000")

    dense_losses = [m["loss"] for m in metrics(os.path.join(runs, "dense"))]
    replica_losses = [m["loss"] for m in metrics(os.path.join(runs, "dense_replica"))]
    check(dense_losses != replica_losses,
          f"the dense replica trained on the same data as dense (losses {replica_losses})")

    # N:M: the exported MLP projections are strictly 2:4 along the input dimension.
    weights = safetensors.torch.load_file(os.path.join(out, "hf", "sparse_nm", "model.safetensors"))
    mlp = [k for k in weights if k.endswith(("gate_proj.weight", "up_proj.weight",
                                             "down_proj.weight"))]
    check(len(mlp) == 6, f"expected 6 MLP projections, got {mlp}")
    for key in mlp:
        groups = weights[key].reshape(weights[key].shape[0], -1, 4)
        check(int((groups != 0).sum(-1).max()) <= 2, f"{key} is not 2:4")

    # Evaluation: every model, task, length and bucket, in range; models are told apart.
    with open(os.path.join(out, "eval.json")) as f:
        evaluation = json.load(f)
    models = evaluation["models"]
    check(sorted(models) == ["dense", "dense_replica", "pretrain", "sparse", "sparse_nm"],
          f"models: {sorted(models)}")
    for name, result in models.items():
        tasks = result["suite"]["tasks"]
        check(len(tasks) == 6 and all(len(v) == 3 for v in tasks.values()),
              f"{name}: suite shape {tasks}")
        check(all(0.0 <= v <= 1.0 for v in sum(tasks.values(), [])), f"{name}: accuracy range")
        heat = result["heatmap"]["accuracy"]
        check(len(heat) == 3 and all(len(row) == 3 for row in heat), f"{name}: heatmap shape")
        probe = result["probe"]["tasks"]
        check(sorted(probe) == sorted(quality_tasks.TRAIN_TASKS) and
              all(len(v) == 3 and all(0.0 <= a <= 1.0 for a in v) for v in probe.values()),
              f"{name}: training-format probe {probe}")
        losses = result["probe"]["answer_loss"]
        check(sorted(losses) == sorted(probe) and
              all(len(v) == 3 and all(math.isfinite(x) and x > 0 for x in v)
                  for v in losses.values()),
              f"{name}: probe answer loss {losses}")
        buckets = result["perplexity"]
        check([b["start"] for b in buckets] == [0, 256, 512, 768] and
              all(math.isfinite(b["loss"]) and b["loss"] > 0 for b in buckets),
              f"{name}: perplexity buckets {buckets}")
    for other in ("pretrain", "dense_replica"):
        check(models[other]["perplexity"] != models["dense"]["perplexity"],
              f"{other} and dense measured identically")

    # Report: tables on stdout and in report.md, plots.
    check("Suite mean accuracy" in process.stdout and "tokens/s" in process.stdout,
          "no table on stdout", process)
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    check("| sparse + N:M 2:4 MLP |" in report and "perplexity per position" in report and
          "Training-format retrieval probe" in report and
          "| dense ring, other data order |" in report and
          report.count("buckets beyond the replica's spread") == 2,
          "report.md incomplete")
    weak_dense = any(a < 0.10 for a in models["dense"]["suite"]["mean"])
    check(("do not tell the runs apart" in report) == weak_dense,
          f"the report's caveat on weak suite scores disagrees with dense's "
          f"{models['dense']['suite']['mean']}")
    for plot in ("perplexity_by_position", "suite_accuracy", "needle_heatmap",
                 "tokens_per_second"):
        check(os.path.getsize(os.path.join(out, "plots", plot + ".png")) > 1000,
              f"{plot}.png missing")

    # A rerun skips finished stages.
    process = run([quality, "--setting", "ci", "--out", out, "--stage", "pretrain",
                   "--stage", "dense"])
    check(process.returncode == 0 and process.stdout.count("done already") == 2,
          "a rerun did not skip the finished stages", process)

    # Bad input: one line, status 2. A finished corpus built with other corpus options is
    # refused, not silently reused.
    with open(os.path.join(source, "configs", "quality", "ci.env")) as f:
        other = f.read().replace("PRETRAIN_RETRIEVAL_FRACTION=0.15",
                                 "PRETRAIN_RETRIEVAL_FRACTION=0.1")
    check("PRETRAIN_RETRIEVAL_FRACTION=0.1\n" in other, "ci.env has no pretraining mix to change")
    other_setting = os.path.join(tmp, "ci_other.env")
    with open(other_setting, "w") as f:
        f.write(other)
    one_line_error(run([quality, "--setting", other_setting, "--out", out, "--stage", "pretrain"]),
                   "corpus built with other options")
    one_line_error(run([quality, "--setting", "nope"]), "unknown setting")
    one_line_error(run([quality, "--stage", "train"]), "unknown stage")
    one_line_error(run([python, os.path.join(launch, "quality_corpus.py"), "--output",
                        os.path.join(tmp, "c"), "--vocab-size", "10"]), "corpus: vocabulary")
    one_line_error(run([python, os.path.join(launch, "quality_corpus.py"), "--output",
                        os.path.join(tmp, "c"), "--max-mb", "x"]), "corpus: --max-mb x")
    one_line_error(run([python, os.path.join(launch, "quality_eval.py"), "--corpus", corpus,
                        "--model", "x=" + tmp, "--output", os.path.join(tmp, "e.json")]),
                   "eval: not a model directory")
    one_line_error(run([python, os.path.join(launch, "quality_eval.py"), "--corpus", tmp,
                        "--model", "x=" + os.path.join(out, "hf", "dense"),
                        "--output", os.path.join(tmp, "e.json")]), "eval: no corpus")
    one_line_error(run([python, os.path.join(launch, "quality_eval.py"), "--corpus", corpus,
                        "--model", "x=" + os.path.join(out, "hf", "dense"), "--lengths", "64",
                        "--output", os.path.join(tmp, "e.json")]), "eval: short length")
    one_line_error(run([python, os.path.join(launch, "quality_report.py"), tmp]),
                   "report: no results")
print("PASSED")

"""The README's main job: the embedded tiny config on 2 CPU ranks. Dense for its 20 warm-up
steps, then dynamic sparse ring attention re-estimated every step well below every causal block,
and the copy task is learned: the loss falls to a fraction of its start."""
import json
import os

from e2e_common import arguments, check, losses, temporary_directory, train

STEPS, WARMUP = 150, 20  # configs/tiny.pbtxt: train.steps, attention.dense_warmup_steps

binary, source = arguments()
with temporary_directory() as tmp:
    run_dir = os.path.join(tmp, "tiny")
    process = train(binary, source, run_dir, shape=[])
    check(process.returncode == 0, f"train.sh exited {process.returncode}", process)
    values = losses(run_dir)
    check(len(values) == STEPS, f"expected {STEPS} steps in metrics.jsonl, found {len(values)}")
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    print(f"mean loss of the first 10 steps {first:.4f}, of the last 10 {last:.4f}")
    # ln(64) = 4.16 at the start; the copy task's floor on 1024 tokens is 4.16 x 32 / 1024 = 0.13.
    check(last < 0.25 * first, f"the copy task was not learned: {first:.4f} -> {last:.4f}")
    check(os.path.isfile(os.path.join(run_dir, "config.pbtxt")), "no resolved config.pbtxt")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_second", "attention_density"):
        check(key in records[0], f"metrics.jsonl lacks '{key}'")
    density = [record["attention_density"] for record in records]
    check(all(d == 1.0 for d in density[:WARMUP]),
          f"warm-up steps must be dense: {density[:WARMUP]}")
    sparse = density[WARMUP:]
    mean_density = sum(sparse) / len(sparse)
    print(f"mean attention density after the warm-up {mean_density:.3f}")
    check(max(sparse) < 0.7 and mean_density < 0.5, f"the pattern is not sparse: {sparse}")
    check(f"step   {STEPS}/{STEPS}" in process.stdout, "no console line for the last step", process)
    for rank in (0, 1):
        with open(os.path.join(run_dir, "logs", f"rank_{rank:05d}.log")) as f:
            lines = f.read().splitlines()
        check(len(lines) == STEPS and lines[-1].startswith(f"step {STEPS} loss_share"),
              f"rank {rank}'s log should have one line per step")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    check(summary["steps"] == STEPS and abs(summary["final_loss"] - values[-1]) < 1e-5,
          f"summary.json disagrees with metrics.jsonl: {summary}")
print("PASSED")

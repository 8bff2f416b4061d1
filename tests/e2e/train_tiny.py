"""The README's main job: the embedded tiny config on 2 CPU ranks trains and its loss falls."""
import json
import os

from e2e_common import arguments, check, losses, temporary_directory, train

binary, source = arguments()
with temporary_directory() as tmp:
    run_dir = os.path.join(tmp, "tiny")
    process = train(binary, source, run_dir)
    check(process.returncode == 0, f"train.sh exited {process.returncode}", process)
    values = losses(run_dir)
    check(len(values) == 200, f"expected 200 steps in metrics.jsonl, found {len(values)}")
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    print(f"mean loss of the first 10 steps {first:.4f}, of the last 10 {last:.4f}")
    check(last < 0.5 * first, f"loss did not fall clearly: {first:.4f} -> {last:.4f}")
    check(os.path.isfile(os.path.join(run_dir, "config.pbtxt")), "no resolved config.pbtxt")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    for key in ("step", "loss", "lr", "grad_norm", "tokens_per_second", "attention_density"):
        check(key in record, f"metrics.jsonl lacks '{key}'")
    check("step   200/200" in process.stdout, "no console line for the last step", process)
    for rank in (0, 1):
        with open(os.path.join(run_dir, "logs", f"rank_{rank:05d}.log")) as f:
            lines = f.read().splitlines()
        check(len(lines) == 200 and lines[-1].startswith("step 200 loss_share"),
              f"rank {rank}'s log should have one line per step")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    check(summary["steps"] == 200 and abs(summary["final_loss"] - values[-1]) < 1e-5,
          f"summary.json disagrees with metrics.jsonl: {summary}")
print("PASSED")

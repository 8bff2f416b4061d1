"""The tiny model trains with dynamic sparse ring attention over 2 CPU ranks: the pattern is
re-estimated every step, attends well under every causal block, and the loss still falls."""
import json
import os

from e2e_common import arguments, check, losses, temporary_directory, train

binary, source = arguments()
sparse = ["--set", "attention.kind=SPARSE", "--set", "train.sequence_length=512",
          "--set", "train.steps=150", "--set", "train.micro_batch_size=2",
          "--set", "attention.local_tokens=64", "--set", "attention.sink_tokens=16",
          "--set", "attention.slash_fraction=0.01", "--set", "attention.vertical_fraction=0.01"]
with temporary_directory() as tmp:
    run_dir = os.path.join(tmp, "tiny_sparse")
    process = train(binary, source, run_dir, *sparse)
    check(process.returncode == 0, f"train.sh exited {process.returncode}", process)
    values = losses(run_dir)
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    print(f"mean loss of the first 10 steps {first:.4f}, of the last 10 {last:.4f}")
    check(last < 0.8 * first, f"loss did not fall: {first:.4f} -> {last:.4f}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        density = [json.loads(line)["attention_density"] for line in f]
    mean_density = sum(density) / len(density)
    print(f"mean attention density {mean_density:.3f}")
    check(mean_density < 0.8, f"the pattern is not sparse: density {mean_density:.3f}")
print("PASSED")

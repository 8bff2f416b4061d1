"""The same global batch gives the same losses however it is split over ranks: 1 rank x 8
sequences, 4 data-parallel x 2 context-parallel ranks x 2 sequences, and sparse attention on
1 rank vs a 2-rank ring (the pattern is estimated over the whole sequence either way)."""
import os

from e2e_common import arguments, check, losses, temporary_directory, train

binary, source = arguments()
common = ["--set", "train.steps=4", "--set", "schedule.warmup_steps=1"]
splits = {
    "dp1_cp1_mb8": ["--set", "parallel.context_parallel_size=1", "--set",
                    "train.micro_batch_size=8"],
    "dp4_cp2_mb2": ["--set", "parallel.data_parallel_size=4", "--set",
                    "train.micro_batch_size=2"],
    "sparse_cp1": ["--set", "parallel.context_parallel_size=1", "--set", "attention.kind=SPARSE",
                   "--set", "attention.local_tokens=64", "--set", "attention.slash_budget=8"],
    "sparse_cp2": ["--set", "attention.kind=SPARSE", "--set", "attention.local_tokens=64",
                   "--set", "attention.slash_budget=8"],
}
results = {}
with temporary_directory() as tmp:
    for name, options in splits.items():
        run_dir = os.path.join(tmp, name)
        process = train(binary, source, run_dir, *common, *options)
        check(process.returncode == 0, f"{name}: exit {process.returncode}", process)
        results[name] = losses(run_dir)
        print(name, results[name])
for a, b in (("dp1_cp1_mb8", "dp4_cp2_mb2"), ("sparse_cp1", "sparse_cp2")):
    for step, (x, y) in enumerate(zip(results[a], results[b]), 1):
        check(abs(x - y) <= 1e-4 * abs(x), f"step {step}: {a} loss {x} != {b} loss {y}")
print("PASSED")

"""launch/sweep.sh end to end on configs/sweeps/tiny_layouts.pbtxt (3 layouts x 2 attention kinds,
20 steps each): every run trains into <runs root>/tiny_layouts/<run>/, summary.csv and summary.md
get one row per run with its swept values; a second call skips every finished run; --jobs-only
prints one launch command per unfinished run; a bad axis value stops the sweep before any run."""
import csv
import json
import os

from e2e_common import arguments, check, run, temporary_directory

binary, source = arguments()
sweep_sh = os.path.join(source, "launch", "sweep.sh")
sweep_file = os.path.join(source, "configs", "sweeps", "tiny_layouts.pbtxt")
layouts, kinds = ["CONTIGUOUS", "ZIGZAG", "BALANCED"], ["DENSE", "SPARSE"]
expected = {f"tiny_layouts_layout-{layout}_kind-{kind}": (layout, kind)
            for layout in layouts for kind in kinds}

process = run([binary, "sweep", "--sweep", sweep_file, "--print-runs"], binary)
check(process.returncode == 0, "sparsering sweep --print-runs failed", process)
lines = [line.split("\t") for line in process.stdout.splitlines()]
check([line[0] for line in lines] == list(expected), f"unexpected runs: {process.stdout}")
check(all(line[1] == "2" and line[2].endswith("configs/tiny.pbtxt") and
          "train.steps=20" in line[3:] for line in lines), f"bad launch lines: {process.stdout}")
process = run([binary, "sweep", "--sweep", sweep_file], binary)
check(process.returncode == 0 and "6 runs (GRID)" in process.stdout, "no table", process)

with temporary_directory() as tmp:
    # --jobs-only runs nothing and prints one command per run.
    process = run([sweep_sh, sweep_file, "--jobs-only", "--runs-root", tmp], binary)
    check(process.returncode == 0, "--jobs-only failed", process)
    jobs = process.stdout.splitlines()
    check(len(jobs) == 6 and all("launch/train.sh" in job and "--resume auto" in job
                                 for job in jobs), f"expected 6 launch commands:\n{process.stdout}")
    check(not os.path.exists(os.path.join(tmp, "tiny_layouts")), "--jobs-only must not run")

    process = run([sweep_sh, sweep_file, "--runs-root", tmp], binary, timeout=900)
    check(process.returncode == 0, f"sweep.sh exited {process.returncode}", process)
    sweep_dir = os.path.join(tmp, "tiny_layouts")
    with open(os.path.join(sweep_dir, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    check([row["run"] for row in rows] == list(expected), f"summary.csv rows: {rows}")
    for row in rows:
        layout, kind = expected[row["run"]]
        check(row["parallel.layout"] == layout and row["attention.kind"] == kind,
              f"{row['run']}: swept values {row['parallel.layout']}, {row['attention.kind']}")
        check(row["status"] == "finished" and row["steps"] == "20" and float(row["final_loss"]) > 0
              and float(row["tokens_per_second_mean"]) > 0, f"{row['run']}: bad summary {row}")
        with open(os.path.join(sweep_dir, row["run"], "metrics.jsonl")) as f:
            density = [json.loads(line)["attention_density"] for line in f]
        check((min(density) < 1) == (kind == "SPARSE"),
              f"{row['run']}: attention densities {density} do not match {kind}")
    with open(os.path.join(sweep_dir, "summary.md")) as f:
        table = [line for line in f if line.startswith("| tiny_layouts_")]
    check(len(table) == 6, f"summary.md should have 6 run rows, has {len(table)}")
    plots = [os.path.join(sweep_dir, name)
             for name in ("loss_vs_step.png", "tokens_per_second_vs_context.png")]
    if "matplotlib is not installed" in process.stdout:
        check(not any(map(os.path.exists, plots)), "plots written without matplotlib")
    else:
        check(all(map(os.path.isfile, plots)), "plots missing", process)

    # Again: every run has summary.json, so nothing trains.
    metrics = os.path.join(sweep_dir, next(iter(expected)), "metrics.jsonl")
    before = os.stat(metrics).st_mtime_ns
    process = run([sweep_sh, sweep_file, "--runs-root", tmp], binary)
    check(process.returncode == 0, "second sweep.sh failed", process)
    check(process.stderr.count("finished before (summary.json), skipped") == 6,
          "the second call must skip all 6 runs", process)
    check("==>" not in process.stdout and os.stat(metrics).st_mtime_ns == before,
          "a finished run was trained again", process)
    process = run([sweep_sh, sweep_file, "--jobs-only", "--runs-root", tmp], binary)
    check(process.returncode == 0 and process.stdout == "", "no jobs should be left", process)

    # A run left without summary.json (interrupted) runs again; the others are skipped.
    os.remove(os.path.join(sweep_dir, next(iter(expected)), "summary.json"))
    process = run([sweep_sh, sweep_file, "--jobs-only", "--runs-root", tmp], binary)
    check(len(process.stdout.splitlines()) == 1 and next(iter(expected)) in process.stdout,
          "only the unfinished run should be listed", process)

    # A bad axis value fails before anything runs, naming the run.
    bad = os.path.join(tmp, "bad.pbtxt")
    with open(bad, "w") as f:
        f.write(f'name: "bad" base_config: "{os.path.join(source, "configs", "tiny.pbtxt")}"\n'
                'axis { field: "parallel.layout" values: "BALANCED" values: "STRIPED" }\n')
    process = run([sweep_sh, bad, "--runs-root", tmp], binary)
    errors = [line for line in process.stderr.splitlines() if "error" in line]
    check(process.returncode == 2 and len(errors) == 1 and "run bad_layout-STRIPED" in errors[0],
          "a bad axis value must give one error line naming the run", process)
    check(not os.path.exists(os.path.join(tmp, "bad")), "nothing may run after a bad sweep")
print("PASSED")

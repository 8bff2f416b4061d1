"""Checked writes: a full disk (simulated with SPARSERING_WRITE_FAULT, trainer/checkpoint/atomic_file.h) ends
the run with status 2 and one line naming the file and the space needed; nothing written before
is damaged (metrics keep whole lines, `latest` keeps naming a loadable checkpoint, summary.json
exists only for a complete run); an unwritable run directory is found before step 1."""
import json
import os
import subprocess

from e2e_common import (arguments, check, environment, losses, temporary_directory, train,
                        train_command)

binary, source = arguments()
common = ["--set", "train.steps=4", "--set", "checkpoint.every_steps=2"]


def train_with_write_fault(run_dir, fault, *options):
    env = environment(binary)
    env["SPARSERING_WRITE_FAULT"] = fault
    command = train_command(source, run_dir, *options)
    print("+ SPARSERING_WRITE_FAULT=" + fault, " ".join(command), flush=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def one_line_about(process, text):
    errors = [line for line in process.stderr.splitlines() if "error" in line.lower()]
    check(process.returncode == 2, f"status {process.returncode}, expected 2", process)
    check(len(errors) == 1 and text in errors[0] and "no space left" in errors[0],
          f"expected one line naming {text} and the space: {errors}", process)
    check("Traceback" not in process.stderr and "MPI_ABORT" not in process.stderr,
          "no traceback or MPI notice may follow", process)


with temporary_directory() as tmp:
    # Found before step 1: the run directory does not take writes.
    probe = os.path.join(tmp, "probe")
    process = train_with_write_fault(probe, ".sparsering-write-probe", *common)
    one_line_about(process, "not writable")
    check(not os.path.exists(os.path.join(probe, "metrics.jsonl")), "no step may run")

    # metrics.jsonl fills the disk: one line, no summary.
    metrics = os.path.join(tmp, "metrics")
    process = train_with_write_fault(metrics, "metrics.jsonl", *common)
    one_line_about(process, "metrics.jsonl")
    check(not os.path.exists(os.path.join(metrics, "summary.json")),
          "summary.json must not exist for an incomplete run")

    # summary.json cannot be written: no empty or partial summary is left.
    summary = os.path.join(tmp, "summary")
    process = train_with_write_fault(summary, "summary.json", *common)
    one_line_about(process, "summary.json")
    check(not os.path.exists(os.path.join(summary, "summary.json")), "no summary.json may exist")
    check(len(losses(summary)) == 4, "the metrics of the run must be whole")

    # A complete run, then a resume whose next `latest` cannot be written: the old one stays,
    # and resuming from it works.
    resumed = os.path.join(tmp, "resumed")
    process = train(binary, source, resumed, *common)
    check(process.returncode == 0, "the first run failed", process)
    process = train_with_write_fault(resumed, "checkpoints/latest", "--set", "train.steps=8",
                                     "--set", "checkpoint.every_steps=2", "--resume", "auto")
    one_line_about(process, "latest")
    with open(os.path.join(resumed, "checkpoints", "latest")) as f:
        check(f.read().strip() == "step_00000004", "latest must still name step 4")
    for line in open(os.path.join(resumed, "metrics.jsonl")):
        json.loads(line)  # every line whole
    # The step-6 directory was complete before `latest` failed, so either is a valid start.
    process = train(binary, source, resumed, "--set", "train.steps=8",
                    "--set", "checkpoint.every_steps=2", "--resume", "auto")
    check(process.returncode == 0 and "resumed from" in process.stdout,
          "resume after the failed save must continue from a checkpoint", process)

    # A shard of one rank cannot be written: the job ends with that one line.
    shard = os.path.join(tmp, "shard")
    process = train_with_write_fault(shard, "rank_00001.pt", *common)
    one_line_about(process, "rank_00001.pt")
    check(not os.path.exists(os.path.join(shard, "checkpoints", "latest")),
          "no checkpoint may be published")
print("PASSED")

"""A run owns its directory: a second training on it is refused while the first holds the lock
(the refusal names the holder); a directory with a previous run's files needs --resume or
--overwrite, which moves them aside; resume refuses settings that change the saved state's
meaning and a step budget at or below the checkpoint's step; pruning keeps this run's steps."""
import os
import signal
import subprocess
import time

from e2e_common import (arguments, check, environment, losses, temporary_directory, train,
                        train_command)

binary, source = arguments()
common = ["--set", "train.steps=4", "--set", "checkpoint.every_steps=2",
          "--set", "checkpoint.keep_last=1"]


def one_error_line(process, text):
    errors = [line for line in process.stderr.splitlines() if "error" in line.lower()]
    check(process.returncode == 2, f"status {process.returncode}, expected 2", process)
    check(len(errors) == 1, f"expected one error line, got {errors}", process)
    check(text in errors[0], f"the error line lacks '{text}': {errors[0]}", process)


with temporary_directory() as tmp:
    run_dir = os.path.join(tmp, "run")
    process = train(binary, source, run_dir, *common)
    check(process.returncode == 0, "the first run failed", process)
    first_losses = losses(run_dir)

    # Again without --resume: refused, nothing touched.
    process = train(binary, source, run_dir, *common, "--set", "train.seed=7")
    one_error_line(process, "holds a previous run's files")
    check("--overwrite" in process.stderr and "--resume auto" in process.stderr,
          "the refusal must name both ways on", process)
    check(losses(run_dir) == first_losses, "a refused run changed metrics.jsonl")

    # --resume with --overwrite is contradictory.
    process = train(binary, source, run_dir, *common, "--resume", "auto", "--overwrite")
    one_error_line(process, "choose one")

    # --overwrite moves the old files aside, and the new run's checkpoints survive pruning.
    process = train(binary, source, run_dir, *common, "--set", "train.seed=7", "--overwrite")
    check(process.returncode == 0, "--overwrite failed", process)
    aside = [name for name in os.listdir(run_dir) if name.startswith("overwritten-")]
    check(len(aside) == 1, f"one overwritten-* directory expected: {os.listdir(run_dir)}")
    old = os.path.join(run_dir, aside[0])
    check(losses(old) == first_losses, "the old metrics must be kept aside unchanged")
    check(os.path.isdir(os.path.join(old, "checkpoints", "step_00000004")),
          "the old checkpoints must be kept aside")
    check(losses(run_dir) != first_losses and len(losses(run_dir)) == 4, "the new run's metrics")
    checkpoints = os.path.join(run_dir, "checkpoints")
    with open(os.path.join(checkpoints, "latest")) as f:
        latest = f.read().strip()
    check(latest == "step_00000004" and os.path.isdir(os.path.join(checkpoints, latest)),
          f"latest ({latest}) must name an existing step")

    # Resume refusals: a setting that changes the saved state's meaning, a spent step budget.
    for options, text in [
        (["--set", "nm_sparsity.enabled=true", "--set", "nm_sparsity.layers=up_proj",
          "--set", "train.steps=8"], "nm_sparsity.enabled differs"),
        (["--set", "parallel.layout=ZIGZAG", "--set", "train.steps=8"],
         "parallel.layout differs"),
        (["--set", "train.steps=4"], "at or below the step of the checkpoint"),
    ]:
        process = train(binary, source, run_dir, *common[2:], *options, "--resume", "auto")
        one_error_line(process, text)
    check(os.path.isfile(os.path.join(run_dir, "summary.json")),
          "a refused resume must leave summary.json alone")

    # The lock: a second training on a directory in use is refused, naming the holder.
    locked = os.path.join(tmp, "locked")
    first = subprocess.Popen(
        train_command(source, locked, "--set", "train.steps=100000",
                      "--set", "logging.log_every=100000"),
        env=environment(binary), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(locked, "metrics.jsonl")) and time.time() < deadline:
            time.sleep(0.5)
        check(os.path.exists(os.path.join(locked, "metrics.jsonl")), "the first run did not start")
        process = train(binary, source, locked, "--resume", "auto", "--set", "train.steps=100001")
        one_error_line(process, "in use by another training")
        check("pid" in process.stderr and "host" in process.stderr, "the holder must be named",
              process)
        first.terminate()  # SIGTERM to train.sh, which passes it on
        out, err = first.communicate(timeout=120)
        check(first.returncode == 143, f"SIGTERM must end with status 143, not {first.returncode}")
        check(err.count("interrupted (SIGTERM)") == 1, f"one 'interrupted' line expected:\n{err}")
    finally:
        # A failed check above must not leave the 100000-step holder training: its whole
        # process group (train.sh, mpirun and the ranks) goes.
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
print("PASSED")

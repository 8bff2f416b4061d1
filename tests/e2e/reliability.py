"""A failing rank ends the whole job within seconds with the rank and the reason; a stalled
collective is caught by the watchdog; non-finite steps stop or are skipped as configured."""
import json
import os
import subprocess
import time

from e2e_common import arguments, check, environment, temporary_directory, train_command

binary, source = arguments()


def train(run_dir, fault, *options):
    env = environment(binary)
    if fault:
        env["SPARSERING_FAULT"] = fault
    command = train_command(source, run_dir, "--set", "train.steps=6", *options)
    print("+ SPARSERING_FAULT=" + fault, " ".join(command), flush=True)
    start = time.time()
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    return process, time.time() - start


with temporary_directory() as tmp:
    process, seconds = train(os.path.join(tmp, "throw"), "throw:step:1:3")
    check(process.returncode != 0, "a throwing rank must fail the job", process)
    check("error on rank 1" in process.stderr and "injected fault" in process.stderr,
          "the error must name the rank and the reason", process)
    check(seconds < 60, f"the job took {seconds:.0f} s to end")

    process, seconds = train(os.path.join(tmp, "stall"), "stall:step:1:3",
                             "--set", "parallel.collective_timeout_s=3")
    check(process.returncode != 0, "a stalled rank must fail the job", process)
    check("watchdog" in process.stderr, "the watchdog must say what happened", process)
    check(seconds < 60, f"the stalled job took {seconds:.0f} s to end")

    process, _ = train(os.path.join(tmp, "nan_stop"), "nan:step:0:3")
    check(process.returncode != 0 and "non-finite" in process.stderr,
          "a NaN loss must stop the run by default", process)

    skip_dir = os.path.join(tmp, "nan_skip")
    process, _ = train(skip_dir, "nan:step:0:3", "--set", "train.nan_policy=SKIP_STEP")
    check(process.returncode == 0, "SKIP_STEP must finish the run", process)
    check("step 3 skipped" in process.stderr, "the skip must be warned about", process)
    with open(os.path.join(skip_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    check(last["skipped_steps"] == 1, f"skipped_steps should be 1: {last}")
print("PASSED")

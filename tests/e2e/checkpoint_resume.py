"""Checkpoints: 40 steps straight equal 20 + kill + resume + 20 exactly; a kill in the middle of
writing a checkpoint leaves the previous one loadable; mismatched or corrupt checkpoints are
refused with the reason."""
import os
import subprocess

from e2e_common import (arguments, check, environment, losses, temporary_directory, train,
                        train_command)

binary, source = arguments()
common = ["--set", "train.steps=40", "--set", "checkpoint.every_steps=10",
          "--set", "checkpoint.keep_last=2"]


def train_with_fault(run_dir, fault, *options):
    env = environment(binary)
    env["SPARSERING_FAULT"] = fault
    command = train_command(source, run_dir, *common, *options)
    print("+ SPARSERING_FAULT=" + fault, " ".join(command), flush=True)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


with temporary_directory() as tmp:
    straight = os.path.join(tmp, "straight")
    process = train(binary, source, straight, *common)
    check(process.returncode == 0, "uninterrupted run failed", process)
    reference = losses(straight)
    check(len(reference) == 40, "40 losses expected")
    checkpoints = os.path.join(straight, "checkpoints")
    kept = sorted(d for d in os.listdir(checkpoints) if d.startswith("step_"))
    check(kept == ["step_00000030", "step_00000040"], f"keep_last=2 should keep 30 and 40: {kept}")
    with open(os.path.join(checkpoints, "latest")) as f:
        check(f.read().strip() == "step_00000040", "latest must name the last checkpoint")

    # Killed at the start of step 21 (after the step-20 checkpoint), then resumed.
    killed = os.path.join(tmp, "killed")
    process = train_with_fault(killed, "kill:step:0:21")
    check(process.returncode != 0, "the killed run must fail", process)
    process = train(binary, source, killed, *common, "--resume", "auto")
    check(process.returncode == 0, "resume failed", process)
    check("resumed from" in process.stdout and "step_00000020" in process.stdout,
          "must resume from step 20", process)
    resumed = losses(killed)
    check(resumed == reference, f"resumed losses differ:\n{resumed}\n{reference}")

    # Killed while writing the step-30 checkpoint (rank 1 wrote its shard, nothing published).
    torn = os.path.join(tmp, "torn")
    process = train_with_fault(torn, "kill:checkpoint:1:30")
    check(process.returncode != 0, "the run killed mid-checkpoint must fail", process)
    torn_checkpoints = os.path.join(torn, "checkpoints")
    check(os.path.isdir(os.path.join(torn_checkpoints, "step_00000030.tmp")),
          "the interrupted checkpoint should be left as .tmp")
    with open(os.path.join(torn_checkpoints, "latest")) as f:
        check(f.read().strip() == "step_00000020", "latest must still name step 20")
    process = train(binary, source, torn, *common, "--resume", "auto")
    check(process.returncode == 0 and "step_00000020" in process.stdout,
          "resume after a torn checkpoint must use step 20", process)
    check(losses(torn) == reference, "losses after resuming a torn run differ")

    # Refusals: another model, a corrupt shard.
    process = train(binary, source, straight, *common, "--set", "model.ffn_hidden_size=256",
                    "--resume", "auto")
    check(process.returncode == 2 and "the model differs" in process.stderr,
          "a different model must be refused", process)
    # Another world size is not refused: checkpoints reshard on load (tests/e2e/zero_stages.py).
    shard = os.path.join(checkpoints, "step_00000040", "rank_00001.pt")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    process = train(binary, source, straight, *common, "--resume",
                    os.path.join(checkpoints, "step_00000040"))
    check(process.returncode == 2 and "rank_00001.pt has the wrong size" in process.stderr,
          "a truncated shard must be refused when named", process)
    process = train(binary, source, straight, *common, "--set", "train.steps=41", "--resume",
                    "auto")
    check(process.returncode == 0 and "step_00000030" in process.stdout,
          "--resume auto must fall back to the newest intact checkpoint", process)
print("PASSED")

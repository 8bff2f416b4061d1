"""The README runs as written: every ```sh block of README.md, in order, in a fresh directory laid
out like the repository (its launch/, configs/ and README.md, the build's binary as
build/sparsering, .venv/), with step counts cut to a tenth (at least 2), 20 steps for trainings
that give none, and the default's 20 dense warm-up steps cut to a tenth as well. The set-up and
test commands (launch/setup.sh, ctest) are skipped: CI runs them itself before this test. Open
MPI's run-as-root permission is removed from the environment, so the commands must work as root
on their own, as a user would run them."""
import json
import os
import re
import subprocess

from e2e_common import arguments, check, temporary_directory

binary, source = arguments()
SKIPPED = ("launch/setup.sh", "ctest ")
WARMUP = 2  # configs/tiny.pbtxt's attention.dense_warmup_steps (20), cut to a tenth


def small_steps(match):
    return f"train.steps={max(2, int(match.group(1)) // 10)}"


def script_of(block):
    """The block as one bash script: continuation lines joined, step counts made small."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        command = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not command or command.startswith(SKIPPED):
            continue
        command = re.sub(r"train\.steps=(\d+)", small_steps, command)
        if "launch/train.sh" in command and "train.steps=" not in command:
            command += " --set train.steps=20"
        if "launch/train.sh" in command and "dense_warmup_steps" not in command:
            command += f" --set attention.dense_warmup_steps={WARMUP}"
        lines.append(command)
    return lines


with open(os.path.join(source, "README.md")) as f:
    readme = f.read()
blocks = re.findall(r"^```sh\n(.*?)^```", readme, re.S | re.M)
check(len(blocks) >= 3, f"README.md: expected the set-up, test and command blocks, found "
      f"{len(blocks)}")
commands = [command for block in blocks for command in script_of(block)]
check(any("eval" in c for c in commands) and any("export-hf" in c for c in commands),
      "the README's commands lost eval / export-hf")

env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_ALLOW_RUN_AS_ROOT")}
env.pop("SPARSERING_BIN", None)
env["OMP_NUM_THREADS"] = "1"
with temporary_directory() as tmp:
    for name in ("launch", "configs", "README.md"):
        os.symlink(os.path.join(source, name), os.path.join(tmp, name))
    if os.path.isdir(os.path.join(source, ".venv")):
        os.symlink(os.path.join(source, ".venv"), os.path.join(tmp, ".venv"))
    os.mkdir(os.path.join(tmp, "build"))
    os.symlink(os.path.abspath(binary), os.path.join(tmp, "build", "sparsering"))
    for command in commands:
        print("+", command, flush=True)
        process = subprocess.run(["bash", "-c", "set -euo pipefail; " + command], cwd=tmp,
                                 env=env, capture_output=True, text=True, timeout=600)
        print(process.stdout[-1500:])
        check(process.returncode == 0, f"README command failed ({process.returncode}): {command}",
              process)
    for output in ["runs/tiny/summary.json", "runs/x/eval.json", "runs/x_hf/config.json",
                   "runs/x_imported/summary.json", "runs/text_run/summary.json",
                   "runs/tiny_layouts/summary.md"]:
        check(os.path.isfile(os.path.join(tmp, output)), f"{output} was not written")
    # The sparse example must be sparse, not the dense pattern under another name.
    with open(os.path.join(tmp, "runs", "x", "metrics.jsonl")) as f:
        densities = [json.loads(line)["attention_density"] for line in f]
    check(len(densities) > WARMUP and max(densities[WARMUP:]) < 0.8,
          f"runs/x is not sparse after its warm-up: attention densities {densities}")
    overwritten = [n for n in os.listdir(os.path.join(tmp, "runs", "tiny"))
                   if n.startswith("overwritten-")]
    check(len(overwritten) == 1, "--overwrite must have moved the first tiny run aside")
print("PASSED")

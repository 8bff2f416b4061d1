"""Helpers of the end-to-end tests: run the real binary through launch/train.sh or mpirun."""
import json
import os
import subprocess
import sys
import tempfile


def arguments():
    """The test's arguments from CTest: the sparsering binary and the source directory."""
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} SPARSERING_BIN SOURCE_DIR")
    return sys.argv[1], sys.argv[2]


def environment(binary):
    env = dict(os.environ)
    env["SPARSERING_BIN"] = binary
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(command, binary, timeout=600, cwd=None):
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, env=environment(binary), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


# The shape most tests train the tiny model on: dense attention over 256 tokens with no dense
# warm-up, seconds per run on two cores. The embedded default (configs/tiny.pbtxt) trains sparse
# ring attention on 1024-token sequences after 20 dense steps, about ten times the work per step;
# the tests of the default itself run it as it is. A test's own --set options come after these and
# win; one that turns attention.kind=SPARSE on gets sparse steps from the first.
SMALL_DENSE = ["--set", "attention.kind=DENSE", "--set", "train.sequence_length=256",
               "--set", "attention.dense_warmup_steps=0"]


def train_command(source, run_dir, *options, config=None, shape=SMALL_DENSE):
    """launch/train.sh on a config (default configs/tiny.pbtxt) with the options after `shape`
    (SMALL_DENSE unless given; [] runs the config as it is)."""
    config = config or os.path.join(source, "configs", "tiny.pbtxt")
    return [os.path.join(source, "launch", "train.sh"), config, "--run-dir", run_dir, *shape,
            *options]


def train(binary, source, run_dir, *options, config=None, shape=SMALL_DENSE):
    """train_command run to its end; returns the completed process."""
    return run(train_command(source, run_dir, *options, config=config, shape=shape), binary)


def losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


def check(condition, message, process=None):
    if condition:
        return
    if process is not None:
        print(process.stdout[-4000:])
        print(process.stderr[-4000:], file=sys.stderr)
    sys.exit("FAILED: " + message)


def temporary_directory():
    return tempfile.TemporaryDirectory(prefix="sparsering-e2e-")

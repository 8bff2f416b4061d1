"""Bad input ends with status 2 and one line naming the input and the fix; --help succeeds."""
import os
import tempfile

from e2e_common import arguments, check, run, temporary_directory, train

binary, source = arguments()
mpirun = ["mpirun", "-np", "1"]
with temporary_directory() as tmp:
    broken = os.path.join(tmp, "broken.pbtxt")
    with open(broken, "w") as f:
        f.write("model {\n  num_layers: 2\n  hidden_sise: 64\n}\n")
    bad_rule = os.path.join(tmp, "bad_rule.pbtxt")
    with open(bad_rule, "w") as f:
        f.write("model { num_heads: 3 }\n")
    corrupt_shards = os.path.join(tmp, "corrupt_shards")
    os.makedirs(corrupt_shards)
    with open(os.path.join(corrupt_shards, "part-0000.srtok"), "wb") as f:
        f.write(b"not a token shard at all, just bytes" * 4)
    shards = ["--set", "data.source=TOKEN_SHARDS", "--set", "parallel.context_parallel_size=1"]
    cases = [
        # (command, expected status, text the error must contain)
        (mpirun + [binary, "train", *shards, "--set", "data.path=" + os.path.join(tmp, "nodata")],
         2, "data.path"),
        (mpirun + [binary, "train", *shards, "--set", "data.path=" + corrupt_shards], 2,
         "part-0000.srtok"),
        (mpirun + [binary, "train", "--set", "parallel.context_parallel_size=3"], 2,
         "train.sequence_length"),
        (mpirun + [binary, "train", "--bogus"], 2, "unknown option '--bogus'"),
        (mpirun + [binary, "trian"], 2, "unknown command 'trian'"),
        (mpirun + [binary, "train", "--config", os.path.join(tmp, "none.pbtxt")], 2,
         "config file not found"),
        (mpirun + [binary, "train", "--config", broken], 2, "broken.pbtxt: line 3"),
        (mpirun + [binary, "train", "--config", bad_rule], 2, "model.hidden_size"),
        (mpirun + [binary, "train", "--set", "train.steps=-1"], 2, "train.steps = -1"),
        (mpirun + [binary, "train", "--set", "optimizer.lrr=1"], 2, "has no field 'lrr'"),
        (mpirun + [binary, "train"], 2, "launch 2 ranks"),
        (mpirun + [binary, "bench"], 2, "unknown command 'bench'"),
        (mpirun + [binary, "eval"], 2, "needs --checkpoint"),
        (mpirun + [binary, "train", "--help"], 0, "usage: mpirun"),
        (mpirun + [binary, "--help"], 0, "commands:"),
        ([os.path.join(source, "launch", "train.sh"), os.path.join(tmp, "none.pbtxt")], 2,
         "config file not found"),
    ]
    for command, status, text in cases:
        # In an empty directory: commands without --run-dir use runs/<name> under it, which must
        # not hold an earlier run's files.
        workdir = tempfile.mkdtemp(dir=tmp)
        process = run(command, binary, cwd=workdir)
        output = process.stdout + process.stderr
        check(process.returncode == status,
              f"{' '.join(command)}: status {process.returncode}, expected {status}", process)
        check(text in output, f"{' '.join(command)}: output lacks '{text}'", process)
        if status == 2:
            errors = [line for line in process.stderr.splitlines() if "error" in line]
            check(len(errors) == 1, f"{' '.join(command)}: expected one error line", process)
    # A failure on one rank mid-run ends the whole job (no hang): an unwritable run directory
    # is found by rank 0 only, after the ranks have started talking.
    blocker = os.path.join(tmp, "file")
    open(blocker, "w").close()
    process = train(binary, source, os.path.join(blocker, "run"))
    check(process.returncode != 0, "a run dir below a file must fail", process)
    check("cannot create the run directory" in process.stderr, "no reason given", process)
print("PASSED")

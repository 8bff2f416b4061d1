"""SIGINT (Ctrl-C: the whole process group) and SIGTERM (to launch/train.sh alone) end a run with
one "interrupted" line and status 130 / 143, and the last checkpoint stays loadable."""
import os
import signal
import subprocess
import time

from e2e_common import arguments, check, environment, temporary_directory, train, train_command

binary, source = arguments()


def start(run_dir, *options):
    command = train_command(source, run_dir, "--set", "train.steps=100000",
                            "--set", "logging.log_every=100000",
                            "--set", "checkpoint.every_steps=2", *options)
    print("+", " ".join(command), flush=True)
    return subprocess.Popen(command, env=environment(binary), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_checkpoint(run_dir):
    latest = os.path.join(run_dir, "checkpoints", "latest")
    deadline = time.time() + 120
    while not os.path.exists(latest) and time.time() < deadline:
        time.sleep(0.2)
    check(os.path.exists(latest), "no checkpoint was written")


with temporary_directory() as tmp:
    for signal_number, status, name, whole_group in [(signal.SIGINT, 130, "SIGINT", True),
                                                     (signal.SIGTERM, 143, "SIGTERM", False)]:
        run_dir = os.path.join(tmp, name)
        process = start(run_dir)
        wait_for_checkpoint(run_dir)
        if whole_group:
            os.killpg(process.pid, signal_number)
        else:
            process.send_signal(signal_number)
        out, err = process.communicate(timeout=120)
        print(err)
        check(process.returncode == status,
              f"{name}: status {process.returncode}, expected {status}")
        # Ctrl-C reaches the ranks directly or as mpirun's SIGTERM: either names itself.
        check(err.count("sparsering: interrupted (") == 1,
              f"{name}: one 'interrupted' line expected")
        check("Traceback" not in err and "MPI_ABORT" not in err, f"{name}: no other noise")
        with open(os.path.join(run_dir, "checkpoints", "latest")) as f:
            latest = int(f.read().strip().split("_")[1])
        resumed = train(binary, source, run_dir, "--set", f"train.steps={latest + 4}",
                        "--set", "checkpoint.every_steps=2", "--resume", "auto")
        check(resumed.returncode == 0 and "resumed from" in resumed.stdout,
              f"{name}: the last checkpoint must load", resumed)
print("PASSED")

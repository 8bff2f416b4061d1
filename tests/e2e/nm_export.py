"""N:M training end to end: the tiny model trains 2:4-sparse projections with gradient decay,
checkpoints, resumes with its schedule state, and exports weights that are exactly 2:4 along the
input dimension of every sparse layer (and dense elsewhere)."""
import json
import os
import struct
import subprocess

from e2e_common import (SMALL_DENSE, arguments, check, environment, losses, run,
                        temporary_directory, train, train_command)

binary, source = arguments()
nm = ["--set", "nm_sparsity.enabled=true", "--set", "nm_sparsity.n=2", "--set", "nm_sparsity.m=4",
      "--set", "nm_sparsity.layers=q_proj,up_proj", "--set", "nm_sparsity.mode=MDGF_LINEAR",
      "--set", "nm_sparsity.kappa=0.05", "--set", "checkpoint.every_steps=5"]


def read_safetensors(path):
    with open(path, "rb") as f:
        header_length = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_length))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        check(info["dtype"] == "F32", f"{name}: expected F32 for the fp32 tiny model")
        begin, end = info["data_offsets"]
        tensors[name] = (info["shape"], struct.unpack(f"<{(end - begin) // 4}f", data[begin:end]))
    return tensors


with temporary_directory() as tmp:
    run_dir = os.path.join(tmp, "nm")
    process = train(binary, source, run_dir, "--set", "train.steps=10", *nm)
    check(process.returncode == 0, "N:M training failed", process)
    straight = losses(run_dir)
    # Killed at the start of step 6, resumed from the step-5 checkpoint: the N:M schedule state
    # comes back with it, so the losses equal the uninterrupted run's exactly.
    resumed_dir = os.path.join(tmp, "nm_resumed")
    env = environment(binary)
    env["SPARSERING_FAULT"] = "kill:step:0:6"
    command = train_command(source, resumed_dir, "--set", "train.steps=10", *nm)
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    check(process.returncode != 0, "the killed run must fail", process)
    process = train(binary, source, resumed_dir, "--set", "train.steps=10", *nm, "--resume",
                    "auto")
    check(process.returncode == 0, "N:M resume failed", process)
    check(losses(resumed_dir) == straight, "N:M losses after resume differ from the straight run")

    out = os.path.join(tmp, "hf")
    process = run(["mpirun", "-np", "2", binary, "export-hf", "--checkpoint", "auto", "--run-dir",
                   run_dir, "--out", out, *SMALL_DENSE, *nm], binary)
    check(process.returncode == 0, "export-hf failed", process)
    check("strictly N:M" in process.stdout, "export must say it wrote strict N:M weights", process)
    tensors = read_safetensors(os.path.join(out, "model.safetensors"))
    sparse, dense = 0, 0
    for name, (shape, values) in tensors.items():
        rows, columns = shape if len(shape) == 2 else (1, shape[0])
        groups = [values[r * columns + c:r * columns + c + 4] for r in range(rows)
                  for c in range(0, columns - columns % 4, 4)]
        nonzero = [sum(1 for v in g if v != 0.0) for g in groups]
        if name.endswith(("q_proj.weight", "up_proj.weight")):
            check(all(n <= 2 for n in nonzero), f"{name} is not 2:4")
            sparse += 1
        elif len(shape) == 2:
            check(any(n > 2 for n in nonzero), f"{name} should stay dense")
            dense += 1
    check(sparse == 4 and dense > 0, f"expected 4 sparse layers, found {sparse}")
print("PASSED")

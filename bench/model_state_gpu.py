"""Sharded model state on one GPU: training runs of the ~1.1B model (stage 0 against stage 1 with
the optimizer offloaded to the host, at 32K and 128K tokens) and of the Qwen2.5-3B and Llama-3-8B
shapes (stage 3 with offload: dense against sparse at 64K and 128K, then sparse at the longest
context `sparsering plan` says fits; a length beyond the planner's longest context on this GPU
is skipped with a line saying so), each with its measured peak memory
against the prediction of `sparsering plan` and the time of the optimizer step (the host AdamW
when offloaded).

    bench/model_state_gpu.py --binary build/sparsering [--suite 1b,3b,8b] [--only 131072,longest]
                             [--kinds sparse] [--json FILE]

tokens/s is the mean of the profiled steps (every step after the first); peak memory and the
optimizer phase come from `train --profile`. A run that runs out of memory is a row saying so.
Prints a table and writes JSON."""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config, [(tokens, attention kind, steps, extra --set values)])
OFFLOAD = ["parallel.zero_stage=1", "optimizer.offload=CPU"]
SUITES = {
    "1b": ("llama_1b.pbtxt", [
        (32768, "SPARSE", 4, []),
        (32768, "SPARSE", 4, OFFLOAD),
        (131072, "SPARSE", 3, []),
        (131072, "SPARSE", 3, OFFLOAD),
    ]),
    "3b": ("qwen2_5_3b_shape.pbtxt", [
        (65536, "DENSE", 3, []),
        (65536, "SPARSE", 3, []),
        (131072, "DENSE", 3, []),
        (131072, "SPARSE", 3, []),
        ("longest", "SPARSE", 2, []),
    ]),
    "8b": ("llama3_8b_shape.pbtxt", [
        (65536, "DENSE", 2, []),
        (65536, "SPARSE", 2, []),
        (131072, "DENSE", 2, []),  # where the planner says it fits (an H200, not an H100)
        (131072, "SPARSE", 2, []),
        ("longest", "SPARSE", 2, []),
    ]),
}


def gpu_memory_gib():
    try:
        text = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,"
                               "nounits", "-i", "0"], capture_output=True, text=True).stdout
        return int(text.split()[0]) / 1024.0
    except (OSError, ValueError, IndexError):
        return 0.0


def plan(binary, config, overrides, gpu_gib):
    command = [binary, "plan", "--config", config, "--gpu-memory", str(int(gpu_gib))]
    for value in overrides:
        command += ["--set", value]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        sys.exit(f"model_state_gpu: plan failed: {process.stderr.strip()}")
    total = re.search(r"at \d+ tokens \(\d+ per rank\)\s+([0-9.]+) GiB", process.stdout)
    longest = re.search(r"longest context in .*?: (\d+) tokens", process.stdout)
    return (float(total.group(1)) if total else None,
            int(longest.group(1)) if longest else 0)


def train(binary, config, overrides, steps, run_dir, log):
    command = [os.path.join(ROOT, "launch", "train.sh"), config, "--run-dir", run_dir,
               "--overwrite", "--profile", "--set", "profiling.start_step=2", "--set",
               f"profiling.num_steps={steps - 1}", "--set", f"train.steps={steps}", "--set",
               "checkpoint.every_steps=0"]
    for value in overrides:
        command += ["--set", value]
    environment = dict(os.environ, SPARSERING_BIN=binary)
    start = time.time()
    process = subprocess.run(command, capture_output=True, text=True, env=environment)
    log.write("+ " + " ".join(command) + "\n" + process.stdout + process.stderr + "\n")
    log.flush()
    row = {"ok": process.returncode == 0, "wall_s": round(time.time() - start, 1)}
    if process.returncode != 0:
        out_of_memory = "out of memory" in (process.stdout + process.stderr).lower()
        row["error"] = "out of memory" if out_of_memory else f"exit {process.returncode}"
        return row
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    profiled = [m for m in metrics if m["step"] >= 2] or metrics
    row["tokens_per_second"] = sum(m["tokens_per_second"] for m in profiled) / len(profiled)
    row["loss"] = metrics[-1]["loss"]
    peak = re.search(r"^\s*peak memory MiB\s+([0-9.]+)", process.stdout, re.M)
    row["peak_gib"] = float(peak.group(1)) / 1024 if peak else None
    optimizer = re.search(r"^\s*optimizer\s+.*?([0-9.]+)\s+([0-9.]+)%\s+[0-9.]+\s*$",
                          process.stdout, re.M)
    if optimizer:
        row["optimizer_ms"] = float(optimizer.group(1))
        row["optimizer_share"] = float(optimizer.group(2)) / 100
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=os.path.join(ROOT, "build", "sparsering"))
    parser.add_argument("--suite", default="1b,3b,8b", help="comma-separated: 1b, 3b, 8b")
    parser.add_argument("--only", default="",
                        help="comma-separated token counts (or 'longest') to run; default all")
    parser.add_argument("--kinds", default="",
                        help="comma-separated attention kinds (dense, sparse) to run; default both")
    parser.add_argument("--json", default="model_state_gpu.json")
    parser.add_argument("--log", default="model_state_gpu.log")
    parser.add_argument("--run-root", default="/tmp/model_state_gpu")
    arguments = parser.parse_args()
    unknown = set(arguments.kinds.lower().split(",")) - {"", "dense", "sparse"}
    if unknown:
        parser.error(f"--kinds {arguments.kinds}: must be dense, sparse or both, comma-separated")
    gpu_gib = gpu_memory_gib()
    rows = []
    with open(arguments.log, "w") as log:
        for suite in arguments.suite.split(","):
            if suite not in SUITES:
                sys.exit(f"model_state_gpu: --suite {suite}: must be one of {', '.join(SUITES)}")
            config_name, runs = SUITES[suite]
            config = os.path.join(ROOT, "configs", config_name)
            for tokens, kind, steps, extra in runs:
                if arguments.only and str(tokens) not in arguments.only.split(","):
                    continue
                if arguments.kinds and kind.lower() not in arguments.kinds.lower().split(","):
                    continue
                overrides = [f"attention.kind={kind}", *extra]
                if tokens == "longest":
                    # The planner's longest context as it is: the run checks that claim.
                    _, longest = plan(arguments.binary, config, overrides, gpu_gib)
                    tokens = longest
                    if tokens == 0:
                        continue
                overrides.append(f"train.sequence_length={tokens}")
                planned, longest = plan(arguments.binary, config, overrides, gpu_gib)
                name = f"{suite} {kind.lower()} {tokens // 1024}K" + (
                    " " + " ".join(extra) if extra else "")
                if tokens > longest:
                    print(f"== {name}: skipped, the planner's longest context on this GPU is "
                          f"{longest} tokens", flush=True)
                    continue
                print(f"== {name}", flush=True)
                run_dir = os.path.join(arguments.run_root, re.sub(r"[^A-Za-z0-9]+", "_", name))
                row = {"name": name, "config": config_name, "tokens": tokens, "kind": kind,
                       "overrides": overrides, "planned_gib": planned,
                       **train(arguments.binary, config, overrides, steps, run_dir, log)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nmodel state on one GPU ({gpu_gib:.0f} GiB)")
    print(f"{'run':<58} {'tokens/s':>9} {'optimizer ms':>13} {'peak GiB':>9} {'plan GiB':>9}"
          f" {'peak/plan':>9}")
    for row in rows:
        if not row["ok"]:
            print(f"{row['name']:<58} {row['error']}")
            continue
        ratio = row["peak_gib"] / row["planned_gib"] if row.get("peak_gib") and row[
            "planned_gib"] else float("nan")
        optimizer = (f"{row['optimizer_ms']:.0f} ({100 * row['optimizer_share']:.0f}%)"
                     if "optimizer_ms" in row else "-")
        print(f"{row['name']:<58} {row['tokens_per_second']:>9.0f} {optimizer:>13} "
              f"{row.get('peak_gib') or float('nan'):>9.2f} {row['planned_gib'] or 0:>9.2f}"
              f" {ratio:>9.3f}")
    with open(arguments.json, "w") as f:
        json.dump({"gpu_memory_gib": gpu_gib, "runs": rows}, f, indent=1)


if __name__ == "__main__":
    main()

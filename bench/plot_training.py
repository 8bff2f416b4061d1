#!/usr/bin/env python3
"""Training throughput vs context from launch/gpu_check.sh logs: a table, JSON and a plot.

Reads train.log files (runs headed "== train_1b_<kind>_<N>k[_flags]", metrics lines "step i/n |
... tokens/s X | TF/s Y | MFU Z% | density D", profile lines "peak memory MiB M") and gpu_check
summaries ("train_1b_<kind>_<N>k ok ... tokens/s X | ..."). Per (kind, context) it keeps the last
step of the last run whose flags are the chosen ones (by default none or "profile"; e.g.
--dense-flags profile_cp2_zigzag --sparse-flags profile_cp2_abs for the 2-GPU runs), then plots
tokens/s and MFU against context for dense and sparse attention and the sparse/dense ratio.

  plot_training.py LOG... [--png throughput_vs_context.png] [--json training.json]
                   [--dense-flags F] [--sparse-flags F] [--machine "one H100 80GB"]
"""
import argparse
import json
import re
import sys

RUN = re.compile(r"^(?:== )?train_1b_(dense|sparse)_(\d+)k(?:_(\w+))?\b")
METRICS = re.compile(r"tokens/s (\d+) \| TF/s ([\d.]+) \| MFU ([\d.]+)% \| density ([\d.]+)")
PEAK = re.compile(r"^peak memory MiB\s+([\d.]+)")


def parse(paths, accepted):
    """accepted: per kind, the flag strings (None = plain) whose runs count."""
    runs = {}
    for path in paths:
        current = None
        with open(path) as f:
            for line in f:
                run = RUN.match(line)
                if run:
                    kind, context, flags = run.group(1), int(run.group(2)) * 1024, run.group(3)
                    current = (kind, context) if flags in accepted[kind] else None
                    if current:
                        runs[current] = {"kind": kind, "tokens": context, "source": path}
                metrics = METRICS.search(line)
                if current and metrics:
                    runs[current].update(tokens_per_s=int(metrics.group(1)),
                                         tflops=float(metrics.group(2)),
                                         mfu=float(metrics.group(3)) / 100,
                                         density=float(metrics.group(4)))
                peak = PEAK.match(line)
                if current and peak:
                    runs[current]["peak_memory_gib"] = float(peak.group(1)) / 1024
    return [r for r in runs.values() if "tokens_per_s" in r]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--png", default="throughput_vs_context.png")
    parser.add_argument("--json", default="training.json")
    parser.add_argument("--dense-flags", help="flags of the dense runs to use (default: none or "
                        "profile)")
    parser.add_argument("--sparse-flags", help="flags of the sparse runs to use")
    parser.add_argument("--machine", default="one H100 80GB", help="named in the plot's title")
    args = parser.parse_args()
    default = {None, "profile"}
    accepted = {"dense": {args.dense_flags} if args.dense_flags else default,
                "sparse": {args.sparse_flags} if args.sparse_flags else default}
    rows = sorted(parse(args.logs, accepted), key=lambda r: (r["tokens"], r["kind"]))
    if not rows:
        sys.exit("plot_training: no training runs found in " + ", ".join(args.logs))
    by = {(r["kind"], r["tokens"]): r for r in rows}
    for r in rows:
        dense = by.get(("dense", r["tokens"]))
        if r["kind"] == "sparse" and dense:
            r["sparse_over_dense"] = r["tokens_per_s"] / dense["tokens_per_s"]
    print(f"{'kind':7s} {'tokens':>8s} {'tokens/s':>9s} {'MFU':>6s} {'density':>8s} "
          f"{'peak GiB':>9s} {'sparse/dense':>12s}")
    for r in rows:
        print(f"{r['kind']:7s} {r['tokens']:8d} {r['tokens_per_s']:9d} {100 * r['mfu']:5.1f}% "
              f"{r['density']:8.3f} {r.get('peak_memory_gib', float('nan')):9.1f} "
              f"{r.get('sparse_over_dense', float('nan')):12.2f}")
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("dense", "s"), ("sparse", "o")):
        mine = [r for r in rows if r["kind"] == kind]
        left.plot([r["tokens"] / 1024 for r in mine], [r["tokens_per_s"] for r in mine],
                  marker=marker, label=f"{kind} ring attention")
        right.plot([r["tokens"] / 1024 for r in mine], [100 * r["mfu"] for r in mine],
                   marker=marker, label=kind)
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("context (K tokens)")
        axis.grid(alpha=0.3)
        axis.legend()
    left.set_ylabel("training tokens/s")
    right.set_ylabel("MFU (executed FLOPs), %")
    for r in rows:
        if "sparse_over_dense" in r:
            left.annotate(f"{r['sparse_over_dense']:.2f}x", (r["tokens"] / 1024, r["tokens_per_s"]),
                          textcoords="offset points", xytext=(4, 6))
    figure.suptitle(f"~1.1B Llama, {args.machine}, bf16, activation checkpointing (sparse/dense "
                    "ratio annotated)")
    figure.tight_layout()
    figure.savefig(args.png, dpi=110)
    print(f"wrote {args.png} and {args.json}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Tabulates a sweep: one row per run of SWEEP_DIR (runs/<sweep name>/, as launch/sweep.sh left it).

    launch/sweep_summary.py SWEEP_DIR

Reads each run's summary.json (written when a run finishes), config.pbtxt (the resolved config)
and metrics.jsonl, and writes into SWEEP_DIR:
  summary.csv, summary.md            run, status, the swept fields' values, the summary keys
  loss_vs_step.png                   every run's loss curve          (needs matplotlib)
  tokens_per_second_vs_context.png   throughput vs train.sequence_length (needs matplotlib)
The swept fields are those whose resolved values differ between runs, in the sweep's axis order
when runs.tsv (`sparsering sweep --print-runs`, saved by launch/sweep.sh) is there.
"""
import csv
import json
import os
import re
import sys

SUMMARY_KEYS = ["final_loss", "steps", "tokens_per_second_mean", "executed_tflops_mean", "mfu_mean",
                "attention_density_mean", "wall_seconds"]
CONTEXT_FIELD = "train.sequence_length"


def fail(message):
    print(f"sweep_summary.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_text_format(path):
    """Flat {field path: value} of a resolved config; repeated fields join with ','."""
    fields, stack = {}, []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.endswith("{"):
                stack.append(line[:-1].strip())
            elif line == "}":
                stack.pop()
            else:
                match = re.fullmatch(r"(\w+)\s*:\s*(.*)", line)
                if not match:
                    fail(f"{path}:{number}: not a resolved config line: {line}")
                key = ".".join(stack + [match.group(1)])
                value = match.group(2)
                if value.startswith('"') and value.endswith('"'):
                    value = value[1:-1].encode().decode("unicode_escape")
                fields[key] = f"{fields[key]},{value}" if key in fields else value
    return fields


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as error:
        fail(f"{path}: not valid JSON ({error}); delete it to rerun that run")


def read_losses(path):
    """{step: loss}; a resumed run may log a step twice, the later line wins."""
    losses = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                    losses[record["step"]] = record["loss"]
                except (ValueError, KeyError, TypeError):
                    fail(f"{path}: a line is not a metrics record: {line.strip()[:80]}; delete "
                         "that line (a cut write) and rerun")
    return losses


def run_names(sweep_dir):
    """Runs in sweep order (runs.tsv), then any other run directories, sorted."""
    names, overrides = [], {}
    listed = os.path.join(sweep_dir, "runs.tsv")
    if os.path.isfile(listed):
        with open(listed) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if parts[0]:
                    names.append(parts[0])
                    overrides[parts[0]] = parts[3:]
    for entry in sorted(os.listdir(sweep_dir)):
        directory = os.path.join(sweep_dir, entry)
        is_run = any(os.path.isfile(os.path.join(directory, f))
                     for f in ("config.pbtxt", "summary.json"))
        if entry not in names and is_run:
            names.append(entry)
    return names, overrides


def swept_fields(runs, overrides):
    """Fields whose values differ between the runs that have them, in axis order first."""
    order = [o.split("=", 1)[0] for name in overrides for o in overrides[name]]
    order += [key for run in runs for key in run["values"]]
    return [key for key in dict.fromkeys(order)
            if len({run["values"][key] for run in runs if key in run["values"]}) > 1]


def load_runs(sweep_dir):
    names, overrides = run_names(sweep_dir)
    runs = []
    for name in names:
        directory = os.path.join(sweep_dir, name)
        def read(file, reader, missing):
            path = os.path.join(directory, file)
            return reader(path) if os.path.isfile(path) else missing

        summary = read("summary.json", read_json, None)
        config = read("config.pbtxt", parse_text_format, {})
        losses = read("metrics.jsonl", read_losses, {})
        status = "finished" if summary else ("unfinished" if config else "not started")
        # A run that never started has no config.pbtxt: its overrides say what it would be.
        values = dict(o.split("=", 1) for o in overrides.get(name, []) if "=" in o)
        values.update(config)
        runs.append({"name": name, "summary": summary or {}, "config": config, "values": values,
                     "losses": losses, "status": status})
    return runs, swept_fields(runs, overrides)


def write_tables(sweep_dir, runs, fields):
    extra = sorted({key for run in runs for key in run["summary"]} - set(SUMMARY_KEYS))
    keys = SUMMARY_KEYS + extra
    header = ["run", "status"] + fields + keys
    rows = [[run["name"], run["status"]] + [run["values"].get(f, "") for f in fields] +
            [run["summary"].get(k) for k in keys] for run in runs]
    with open(os.path.join(sweep_dir, "summary.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([["" if v is None else v for v in row] for row in rows])

    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value).replace("|", "\\|")

    with open(os.path.join(sweep_dir, "summary.md"), "w") as f:
        f.write(f"# Sweep {os.path.basename(os.path.normpath(sweep_dir))}\n\n")
        f.write("| " + " | ".join(header) + " |\n")
        f.write("|" + "|".join("---" for _ in header) + "|\n")
        for row in rows:
            f.write("| " + " | ".join(cell(v) for v in row) + " |\n")


def write_plots(sweep_dir, runs, fields):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("sweep_summary.py: matplotlib is not installed, so no plots "
              "(launch/setup.sh installs it into .venv); the tables are written")
        return []
    written = []
    figure, axes = plt.subplots(figsize=(8, 5))
    for run in runs:
        if run["losses"]:
            steps = sorted(run["losses"])
            axes.plot(steps, [run["losses"][s] for s in steps], label=run["name"], linewidth=1)
    axes.set(xlabel="step", ylabel="loss", title="loss vs step")
    if any(run["losses"] for run in runs):
        axes.legend(fontsize="x-small")
    figure.tight_layout()
    written.append(os.path.join(sweep_dir, "loss_vs_step.png"))
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    # One line per combination of the other swept fields, so each line varies context only.
    others = [f for f in fields if f != CONTEXT_FIELD]
    series = {}
    for run in runs:
        throughput = run["summary"].get("tokens_per_second_mean")
        if throughput is None or CONTEXT_FIELD not in run["config"]:
            continue
        label = ", ".join(f"{f.split('.')[-1]}={run['config'].get(f, '')}" for f in others)
        series.setdefault(label or run["name"], []).append(
            (int(run["config"][CONTEXT_FIELD]), throughput))
    figure, axes = plt.subplots(figsize=(8, 5))
    for label, points in series.items():
        points.sort()
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axes.set(xlabel=CONTEXT_FIELD + " (tokens)", ylabel="tokens per second (mean)",
             title="throughput vs context")
    if series:
        axes.legend(fontsize="x-small")
    figure.tight_layout()
    written.append(os.path.join(sweep_dir, "tokens_per_second_vs_context.png"))
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)
    return written


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    sweep_dir = sys.argv[1]
    if not os.path.isdir(sweep_dir):
        fail(f"{sweep_dir}: not a directory; give runs/<sweep name> as launch/sweep.sh made it")
    runs, fields = load_runs(sweep_dir)
    if not runs:
        fail(f"{sweep_dir}: no run directories (with config.pbtxt or summary.json) in it")
    write_tables(sweep_dir, runs, fields)
    plots = write_plots(sweep_dir, runs, fields)
    finished = sum(run["status"] == "finished" for run in runs)
    print(f"sweep_summary.py: {len(runs)} runs ({finished} finished), swept "
          f"{', '.join(fields) or 'nothing'}: wrote "
          + ", ".join(["summary.csv", "summary.md"] + [os.path.basename(p) for p in plots])
          + f" in {sweep_dir}")


if __name__ == "__main__":
    # Bad input or a failing disk ends with one line, never a traceback.
    try:
        main()
    except KeyboardInterrupt:
        print("sweep_summary.py: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        fail(f"{error.filename or 'output'}: {error.strerror or error}; check the path and the "
             "free space")
    except (ValueError, KeyError, TypeError) as error:
        fail(f"unreadable run output ({type(error).__name__}: {error}); delete or fix that run's "
             "metrics.jsonl / summary.json and rerun")

"""`sparsering eval`: a checkpoint of a short PASSKEY run is evaluated with dense and sparse
attention side by side, at the trained length and twice it; eval.json holds the loss, perplexity
and accuracies in range, and a missing checkpoint is one error line and exit status 2."""
import json
import math
import os

from e2e_common import SMALL_DENSE, arguments, check, run, temporary_directory, train

binary, source = arguments()
passkey = [*SMALL_DENSE, "--set", "data.source=PASSKEY"]


def evaluate(run_dir, *options):
    return run(["mpirun", "-np", "2", "--bind-to", "none", binary, "eval", *passkey,
                "--run-dir", run_dir, *options], binary)


def in_unit_range(value):
    return isinstance(value, (int, float)) and 0.0 <= value <= 1.0


with temporary_directory() as tmp:
    run_dir = os.path.join(tmp, "passkey")
    process = train(binary, source, run_dir, *passkey, "--set", "train.steps=30",
                    "--set", "checkpoint.every_steps=30")
    check(process.returncode == 0, "training the checkpoint failed", process)

    # Twice the trained length: the needle grid then has the lengths 256 and 512.
    process = evaluate(run_dir, "--checkpoint", "auto", "--attention", "both",
                       "--eval-sequences", "4", "--set", "train.sequence_length=512")
    check(process.returncode == 0, f"eval exited {process.returncode}", process)
    check("needle accuracy" in process.stdout and "sparse" in process.stdout,
          "no results table on the console", process)
    with open(os.path.join(run_dir, "eval.json")) as f:
        report = json.load(f)
    check(report["step"] == 30 and report["held_out"], f"wrong checkpoint or data: {report}")
    check(sorted(report["attention"]) == ["dense", "sparse"], "both attentions expected")
    for mode, result in report["attention"].items():
        check(math.isfinite(result["loss"]) and result["loss"] > 0, f"{mode}: bad loss {result}")
        check(abs(result["perplexity"] - math.exp(result["loss"])) < 1e-3 * result["perplexity"],
              f"{mode}: perplexity is not exp(loss): {result}")
        check(0.0 < result["attention_density"] <= 1.0, f"{mode}: bad density {result}")
        needle = result["needle"]
        check(needle["lengths"] == [256, 512] and len(needle["depths"]) == 5,
              f"{mode}: unexpected needle grid {needle}")
        cells = [v for grid in ("accuracy", "digit_accuracy") for row in needle[grid] for v in row]
        check(len(cells) == 20 and all(in_unit_range(v) for v in cells),
              f"{mode}: accuracies out of [0, 1]: {needle}")
        check(in_unit_range(needle["mean_accuracy"]), f"{mode}: bad mean accuracy")
    check(report["attention"]["dense"]["attention_density"] == 1.0, "dense must compute all")
    with open(os.path.join(run_dir, "needle_heatmap.ppm"), "rb") as f:
        check(f.read(2) == b"P6", "needle_heatmap.ppm is not a PPM image")

    # The same weights on associative recall: the model, not the data, must match.
    process = evaluate(run_dir, "--checkpoint", os.path.join(run_dir, "checkpoints"),
                       "--eval-sequences", "2", "--set", "data.source=ASSOCIATIVE_RECALL")
    check(process.returncode == 0, "recall eval failed", process)
    with open(os.path.join(run_dir, "eval.json")) as f:
        dense = json.load(f)["attention"]["dense"]
    check(in_unit_range(dense.get("recall_accuracy")), f"bad recall accuracy: {dense}")

    # And on the copy task: accuracy over the tokens after the first period.
    process = evaluate(run_dir, "--checkpoint", "auto", "--eval-sequences", "2",
                       "--set", "data.source=SYNTHETIC_COPY", "--set", "data.copy_period=64")
    check(process.returncode == 0, "copy eval failed", process)
    with open(os.path.join(run_dir, "eval.json")) as f:
        report = json.load(f)
    check(in_unit_range(report["attention"]["dense"].get("copy_accuracy")) and
          "copy period" in report["loss_targets"], f"bad copy eval: {report}")

    # No checkpoint: one line naming it, status 2, before any rank starts talking.
    for options in (["--checkpoint", os.path.join(tmp, "none")],
                    ["--checkpoint", "auto", "--run-dir", os.path.join(tmp, "empty")]):
        process = evaluate(run_dir, *options)
        errors = [line for line in process.stderr.splitlines() if "error" in line]
        check(process.returncode == 2 and len(errors) == 1 and "checkpoint" in errors[0],
              f"{options}: expected one error line and status 2", process)
print("PASSED")

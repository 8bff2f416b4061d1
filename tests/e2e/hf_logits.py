"""Logits-level agreement with Hugging Face transformers, for each family (Llama untied; Qwen2
tied, with q/k/v biases) and each RoPE type (default, linear, llama3, yarn): a random tiny model
made by transformers, imported with import-hf, gives at every position of a 2048-token sequence
the logits transformers gives in fp32 (max |difference| <= 1e-4 x max |logit|), on 1 rank and
with context parallelism over 2 and 4 ranks in the zigzag and the balanced layout, with and
without document masking (transformers then runs each document alone at its global positions);
see runs() for how the combinations are spread over the models.
Each model's reference differs from the same weights under default RoPE (and under no document
mask) by far more than the tolerance, so a wrong RoPE or mask fails. Needs transformers in the
running python or in the source tree's .venv; without it, a note and exit 0."""
import os
import sys

from e2e_common import SMALL_DENSE, arguments, check, run, temporary_directory

binary, source = arguments()
try:
    import torch
    import transformers  # noqa: F401
except ImportError:
    venv_python = os.path.join(source, ".venv", "bin", "python3")
    # A venv's python resolves to its base interpreter, so an environment mark stops a loop.
    if os.path.exists(venv_python) and not os.environ.get("SPARSERING_HF_LOGITS_REEXEC"):
        os.environ["SPARSERING_HF_LOGITS_REEXEC"] = "1"
        os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])
    print("note: transformers is not installed (nor in .venv); skipping the logits check")
    print("PASSED")
    sys.exit(0)

sys.path.insert(0, os.path.join(source, "launch"))
from prepare_data import write_shard  # noqa: E402
from hf_models import (FAMILIES, ROPE_TYPES, TINY, per_document_logits, random_model,  # noqa: E402
                       sparsering_overrides)
from safetensors.torch import load_file  # noqa: E402

SEQUENCE_LENGTH, TOLERANCE = 2048, 1e-4
# Documents of the packed sequence: boundaries inside and on 64-token blocks, a one-token
# document, one across the middle of the sequence.
DOCUMENT_LENGTHS = [301, 1, 210, 64, 640, 832]
assert sum(DOCUMENT_LENGTHS) == SEQUENCE_LENGTH
LAYOUTS = ("ZIGZAG", "BALANCED")


def runs(index):
    """(ranks, layout, document mask) for the index-th model (family-major): 1 rank with and
    without the mask; 2 and 4 ranks in the two layouts, one each, one with the mask and one
    without. The choice rotates over the RoPE types and flips between the families, so every
    model runs in both layouts, with and without the mask; every RoPE type runs on 2 and on 4
    ranks in both layouts (over its two families); every (ranks, layout, mask) combination runs
    for two models. Two launches fewer per model than every combination for every model (CI
    time)."""
    family, rope = divmod(index, len(ROPE_TYPES))
    layout, mask = (rope + family) % 2, (rope // 2 + family) % 2 == 0
    return [(1, "BALANCED", False), (1, "BALANCED", True), (2, LAYOUTS[layout], mask),
            (4, LAYOUTS[1 - layout], not mask)]


def sparsering(ranks, command, *options):
    return run(["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none", binary,
                command, *SMALL_DENSE, *options], binary)


def relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


with temporary_directory() as tmp:
    tokens = torch.randint(0, TINY["vocab_size"], (SEQUENCE_LENGTH,),
                           generator=torch.Generator().manual_seed(1))
    shards = os.path.join(tmp, "shards")
    os.makedirs(shards)
    write_shard(os.path.join(shards, "shard_00000.srtok"),
                [d.tolist() for d in torch.split(tokens, DOCUMENT_LENGTHS)], TINY["vocab_size"])
    failures = []
    for index, (family, rope) in enumerate((f, r) for f in FAMILIES for r in ROPE_TYPES):
        case = f"{family}/{rope}"
        model = random_model(family, rope, seed=index + 7)
        hf_dir = os.path.join(tmp, f"hf_{family}_{rope}")
        model.save_pretrained(hf_dir)
        with torch.no_grad():
            reference = {False: model(tokens[None]).logits[0],
                         True: per_document_logits(model, tokens, DOCUMENT_LENGTHS)}
            plain = random_model(family, "default", seed=0)
            plain.load_state_dict(model.state_dict())
            default_rope = plain(tokens[None]).logits[0]
        # The checks can fail: RoPE type and document mask both change the logits.
        if rope != "default":
            check(relative_error(default_rope, reference[False]) > 100 * TOLERANCE,
                  f"{case}: RoPE type does not change transformers' logits")
        check(relative_error(reference[True], reference[False]) > 100 * TOLERANCE,
              f"{case}: documents do not change transformers' logits")
        common = sparsering_overrides(family, rope) + [
            "--set", f"train.sequence_length={SEQUENCE_LENGTH}",
            "--set", "train.micro_batch_size=1", "--set", "parallel.data_parallel_size=1"]
        imported = set()
        for ranks, layout, document_mask in runs(index):
            run_dir = os.path.join(tmp, f"run_{family}_{rope}_{ranks}")
            mesh = ["--set", f"parallel.context_parallel_size={ranks}"]
            if ranks not in imported:
                process = sparsering(ranks, "import-hf", "--hf-dir", hf_dir, "--run-dir",
                                     run_dir, *common, *mesh)
                check(process.returncode == 0, f"{case}: import-hf on {ranks} rank(s)", process)
                imported.add(ranks)
            logits_path = os.path.join(run_dir, "logits.safetensors")
            # The sparse kernels only run (a smoke check): their logits are approximations.
            attention = "both" if ranks == 4 and document_mask else "dense"
            process = sparsering(
                ranks, "eval", "--checkpoint", "auto", "--run-dir", run_dir, "--attention",
                attention, "--eval-sequences", "1", "--logits-out", logits_path, *common, *mesh,
                "--set", f"parallel.layout={layout}", "--set", "data.source=TOKEN_SHARDS",
                "--set", f"data.path={shards}", "--set", "data.shuffle=false",
                "--set", f"data.document_mask={str(document_mask).lower()}")
            check(process.returncode == 0, f"{case}: eval on {ranks} rank(s)", process)
            dumped = load_file(logits_path)
            check(torch.equal(dumped["tokens"][0].long(), tokens),
                  f"{case}: eval did not score the test sequence")
            if attention == "both":
                check(torch.isfinite(dumped["logits.sparse"]).all().item(),
                      f"{case}: sparse attention logits are not finite")
            error = relative_error(dumped["logits.dense"][0], reference[document_mask])
            label = (f"{case} ranks {ranks} {layout.lower()} "
                     f"{'document mask' if document_mask else 'causal'}")
            print(f"{label}: max |logit difference| / max |logit| = {error:.2e}", flush=True)
            if not error <= TOLERANCE:
                failures.append(f"{label}: {error:.2e}")
    check(not failures, "logits differ from transformers beyond "
          f"{TOLERANCE:g} relative: {'; '.join(failures)}")
print("PASSED")

"""Logits-level agreement with Hugging Face transformers: a random LlamaForCausalLM of the tiny
config's shape, imported with import-hf, gives on one 256-token sequence of a token shard the same
dense `sparsering eval` loss as transformers' own forward (within 1e-4 relative); the sparse
attention eval of the same checkpoint is only checked to be finite. The sequence is packed from
several documents: with data.document_mask the dense eval loss equals transformers run on each
document alone at its global positions (RoPE positions stay global). Needs transformers in the
running python or in the source tree's .venv; without it, a note and exit 0."""
import json
import math
import os
import sys

from e2e_common import arguments, check, run, temporary_directory

binary, source = arguments()
try:
    import torch
    import transformers
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

SEQUENCE_LENGTH, VOCAB = 256, 64
# Documents of the packed sequence: boundaries inside and on 64-token blocks, a one-token document.
DOCUMENT_LENGTHS = [37, 1, 90, 64, 64]
assert sum(DOCUMENT_LENGTHS) == SEQUENCE_LENGTH


def sparsering(command, *options):
    return run(["mpirun", "-np", "2", "--bind-to", "none", binary, command, *options], binary)


with temporary_directory() as tmp:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=4096,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False, initializer_range=0.2)
    model = transformers.LlamaForCausalLM(config).to(torch.float32).eval()
    with torch.no_grad():  # norms away from 1 too, so RMSNorm weights are exercised
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    hf_dir = os.path.join(tmp, "hf")
    model.save_pretrained(hf_dir, safe_serialization=True)

    tokens = torch.randint(1, VOCAB, (SEQUENCE_LENGTH,), generator=torch.Generator().manual_seed(1))
    shards = os.path.join(tmp, "shards")
    os.makedirs(shards)
    documents = list(torch.split(tokens, DOCUMENT_LENGTHS))
    write_shard(os.path.join(shards, "shard_00000.srtok"), [d.tolist() for d in documents], VOCAB)

    with torch.no_grad():
        theirs = model(tokens[None], labels=tokens[None]).loss.item()
        # Document masking: each document alone, at its positions in the packed sequence.
        starts = [sum(DOCUMENT_LENGTHS[:i]) for i in range(len(DOCUMENT_LENGTHS))]
        logits = torch.cat([model(d[None], position_ids=torch.arange(a, a + len(d))[None])
                            .logits[0] for a, d in zip(starts, documents)])
        theirs_documents = torch.nn.functional.cross_entropy(logits[:-1], tokens[1:]).item()

    run_dir = os.path.join(tmp, "run")
    process = sparsering("import-hf", "--hf-dir", hf_dir, "--run-dir", run_dir)
    check(process.returncode == 0, "import-hf failed", process)

    def evaluate(attention, document_mask=False):
        process = sparsering("eval", "--checkpoint", "auto", "--run-dir", run_dir,
                             "--attention", attention, "--eval-sequences", "1",
                             "--set", "data.source=TOKEN_SHARDS", "--set", f"data.path={shards}",
                             "--set", "data.shuffle=false",
                             "--set", f"data.document_mask={str(document_mask).lower()}")
        check(process.returncode == 0, f"eval --attention {attention} failed", process)
        with open(os.path.join(run_dir, "eval.json")) as f:
            report = json.load(f)
        check(report["sequence_length"] == SEQUENCE_LENGTH and report["sequences"] == 1,
              f"unexpected eval setup: {report}")
        return report["attention"][attention]["loss"]

    ours = evaluate("dense")
    print(f"dense loss: sparsering {ours!r}, transformers {theirs!r}, "
          f"difference {abs(ours - theirs):.3g}")
    check(abs(theirs - math.log(VOCAB)) > 0.05, f"transformers loss {theirs} is ~uniform")
    check(ours is not None and abs(ours - theirs) <= 1e-4 * max(1.0, theirs),
          f"dense loss {ours} differs from transformers' {theirs}")

    sparse = evaluate("sparse")
    print(f"sparse loss (smoke only): {sparse!r}")
    check(sparse is not None and math.isfinite(sparse), f"sparse loss is not finite: {sparse}")

    ours_documents = evaluate("dense", document_mask=True)
    print(f"dense loss with document masking: sparsering {ours_documents!r}, transformers per "
          f"document {theirs_documents!r}, difference {abs(ours_documents - theirs_documents):.3g}")
    check(abs(theirs_documents - theirs) > 1e-3,
          f"the documents do not change transformers' loss ({theirs_documents} vs {theirs})")
    check(ours_documents is not None and
          abs(ours_documents - theirs_documents) <= 1e-4 * max(1.0, theirs_documents),
          f"document-masked loss {ours_documents} differs from transformers' per-document "
          f"{theirs_documents}")
    sparse_documents = evaluate("sparse", document_mask=True)
    check(sparse_documents is not None and math.isfinite(sparse_documents),
          f"sparse document-masked loss is not finite: {sparse_documents}")
print("PASSED")

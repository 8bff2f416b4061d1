"""Hugging Face interchange: a trained checkpoint exported to safetensors, imported into a new run
and exported again gives bit-identical files; the imported run trains on from step 0; config
mismatches are refused with the matching --set overrides. With `transformers` in the source
tree's .venv, a random LlamaForCausalLM saved by save_pretrained imports and exports back to
tensors identical to its own, and our export loads into transformers with no missing weights."""
import os
import subprocess
import textwrap

from e2e_common import arguments, check, losses, run, temporary_directory, train

binary, source = arguments()
venv_python = os.path.join(source, ".venv", "bin", "python")


def sparsering(command, *options):
    return run(["mpirun", "-np", "2", "--bind-to", "none", binary, command, *options], binary)


def read(path):
    with open(path, "rb") as f:
        return f.read()


with temporary_directory() as tmp:
    trained = os.path.join(tmp, "trained")
    process = train(binary, source, trained, "--set", "train.steps=5",
                    "--set", "checkpoint.every_steps=5")
    check(process.returncode == 0, "training the checkpoint failed", process)

    first = os.path.join(tmp, "hf_first")
    process = sparsering("export-hf", "--checkpoint", "auto", "--run-dir", trained, "--out", first)
    check(process.returncode == 0 and "exported step 5" in process.stdout, "export failed",
          process)
    check(sorted(os.listdir(first)) == ["config.json", "model.safetensors"],
          f"unexpected export files: {os.listdir(first)}")

    imported = os.path.join(tmp, "imported")
    process = sparsering("import-hf", "--hf-dir", first, "--run-dir", imported)
    check(process.returncode == 0, "import failed", process)
    check(os.path.isdir(os.path.join(imported, "checkpoints", "step_00000000")),
          "import must write a step-0 checkpoint")

    second = os.path.join(tmp, "hf_second")
    process = sparsering("export-hf", "--checkpoint", "auto", "--run-dir", imported,
                         "--out", second)
    check(process.returncode == 0, "second export failed", process)
    for name in ("model.safetensors", "config.json"):
        check(read(os.path.join(first, name)) == read(os.path.join(second, name)),
              f"{name} differs after export -> import -> export")

    # The imported run continues training from its step-0 checkpoint.
    process = train(binary, source, imported, "--set", "train.steps=3", "--resume", "auto")
    check(process.returncode == 0 and "step_00000000" in process.stdout,
          "training on from the imported checkpoint failed", process)
    check(len(losses(imported)) == 3, "3 steps expected after the import")

    # Refusals: a run that already has checkpoints; a model config that does not match.
    process = sparsering("import-hf", "--hf-dir", first, "--run-dir", imported)
    check(process.returncode == 2 and "already holds checkpoints" in process.stderr,
          "import into a run with checkpoints must be refused", process)
    process = sparsering("import-hf", "--hf-dir", first, "--run-dir", os.path.join(tmp, "x"),
                         "--set", "model.ffn_hidden_size=256")
    check(process.returncode == 2 and "--set model.ffn_hidden_size=352" in process.stderr,
          "a config mismatch must name the --set override", process)
    weights = os.path.join(first, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) - 100)
    process = sparsering("import-hf", "--hf-dir", first, "--run-dir", os.path.join(tmp, "y"))
    check(process.returncode == 2 and "model.safetensors: truncated" in process.stderr,
          "a truncated safetensors file must be refused by name", process)

    has_transformers = os.path.exists(venv_python) and subprocess.run(
        [venv_python, "-c", "import transformers"], capture_output=True).returncode == 0
    if not has_transformers:
        print("note: transformers is not installed in .venv; skipping the LlamaForCausalLM part")
    else:
        reference = os.path.join(tmp, "hf_reference")
        # The tiny config's model (head_dim 32) in transformers, saved as safetensors.
        script = textwrap.dedent(f"""
            import torch, transformers
            torch.manual_seed(0)
            config = transformers.LlamaConfig(
                hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
                tie_word_embeddings=False)
            model = transformers.LlamaForCausalLM(config).to(torch.float32)
            model.save_pretrained({reference!r}, safe_serialization=True)
            """)
        made = subprocess.run([venv_python, "-c", script], capture_output=True, text=True)
        check(made.returncode == 0, "building the transformers model failed: " + made.stderr[-2000:])
        from_hf = os.path.join(tmp, "from_hf")
        process = sparsering("import-hf", "--hf-dir", reference, "--run-dir", from_hf)
        check(process.returncode == 0, "importing the transformers model failed", process)
        back = os.path.join(tmp, "hf_back")
        process = sparsering("export-hf", "--checkpoint", "auto", "--run-dir", from_hf,
                             "--out", back)
        check(process.returncode == 0, "exporting the imported model failed", process)
        compare = textwrap.dedent(f"""
            import sys, torch, transformers
            from safetensors.torch import load_file
            ref = load_file({reference!r} + "/model.safetensors")
            ours = load_file({back!r} + "/model.safetensors")
            if set(ref) != set(ours): sys.exit(f"names differ: {{set(ref) ^ set(ours)}}")
            bad = [n for n in ref if not torch.equal(ref[n], ours[n])]
            if bad: sys.exit(f"tensors differ: {{bad}}")
            model, info = transformers.LlamaForCausalLM.from_pretrained(
                {second!r}, output_loading_info=True)
            if info["missing_keys"] or info["unexpected_keys"]: sys.exit(f"load: {{info}}")
            print("transformers: identical tensors, export loads")
            """)
        compared = subprocess.run([venv_python, "-c", compare], capture_output=True, text=True)
        print(compared.stdout, compared.stderr[-2000:])
        check(compared.returncode == 0, "transformers comparison failed: " + compared.stderr[-2000:])
print("PASSED")

"""Hugging Face interchange: a trained checkpoint exported to safetensors, imported into a new run
and exported again gives bit-identical files; the imported run trains on from step 0; config
mismatches are refused with the matching --set overrides. With `transformers` in the source
tree's .venv, a random LlamaForCausalLM saved by save_pretrained imports and exports back to
tensors identical to its own, and our export loads into transformers with no missing weights.
Then, for a Llama 3.x model (llama3 RoPE, untied) and a Qwen2.5 model (q/k/v biases, tied, yarn
RoPE), saved by transformers as one file and as shards: import then export gives every tensor
byte for byte (sharded exports in files of at most --max-shard-size tensor bytes, with an index),
and transformers loads the export to the same logits; sliding-window attention, an unknown RoPE
type and a RoPE mismatch are refused by name, and model.rope_override carries a new rope_theta
into the run's config.pbtxt and the exported config.json."""
import glob
import json
import os
import subprocess
import sys
import textwrap

from e2e_common import SMALL_DENSE, arguments, check, losses, run, temporary_directory, train

binary, source = arguments()
venv_python = os.path.join(source, ".venv", "bin", "python")
# The family part runs transformers in this process: use the venv's python when there is one.
if (os.path.exists(venv_python) and not os.environ.get("SPARSERING_HF_ROUNDTRIP_REEXEC")
        and os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(source, ".venv"))):
    os.environ["SPARSERING_HF_ROUNDTRIP_REEXEC"] = "1"
    os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])


def sparsering(command, *options):
    return run(["mpirun", "-np", "2", "--bind-to", "none", binary, command, *SMALL_DENSE,
                *options], binary)


def safetensors_files(directory):
    return sorted(glob.glob(os.path.join(directory, "*.safetensors")))


def tensor_bytes(directory):
    """Every tensor of a weights directory (one file or shards) as (dtype, shape, bytes)."""
    import torch
    from safetensors.torch import load_file
    tensors = {}
    for path in safetensors_files(directory):
        for name, tensor in load_file(path).items():
            check(name not in tensors, f"{directory}: {name} stored twice")
            raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            tensors[name] = (tensor.dtype, tuple(tensor.shape), raw)
    return tensors


def family_round_trips(tmp):
    import torch
    import transformers
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hf_models import random_model, sparsering_overrides
    tokens = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(5))
    for family, rope in (("llama", "llama3"), ("qwen2", "yarn")):
        model = random_model(family, rope, seed=11)
        with torch.no_grad():
            expected = model(tokens).logits
        sets = sparsering_overrides(family, rope)
        for sharded in (False, True):
            case = f"{family}/{rope} {'sharded' if sharded else 'single file'}"
            reference = os.path.join(tmp, f"ref_{family}_{sharded}")
            model.save_pretrained(reference, max_shard_size="100KB" if sharded else "5GB")
            index = os.path.join(reference, "model.safetensors.index.json")
            check(os.path.exists(index) == sharded and len(safetensors_files(reference)) > sharded,
                  f"{case}: transformers did not save the expected layout")
            run_dir = os.path.join(tmp, f"run_{family}_{sharded}")
            process = sparsering("import-hf", "--hf-dir", reference, "--run-dir", run_dir, *sets)
            check(process.returncode == 0, f"{case}: import-hf failed", process)
            out = os.path.join(tmp, f"out_{family}_{sharded}")
            limit = ["--max-shard-size", "100kB"] if sharded else []
            process = sparsering("export-hf", "--checkpoint", "auto", "--run-dir", run_dir,
                                 "--out", out, *limit, *sets)
            check(process.returncode == 0, f"{case}: export-hf failed", process)
            files = safetensors_files(out)
            check(os.path.exists(os.path.join(out, "model.safetensors.index.json")) == sharded
                  and (len(files) > 1) == sharded, f"{case}: export layout {os.listdir(out)}")
            for path in files if sharded else []:
                with open(path, "rb") as f:
                    header = int.from_bytes(f.read(8), "little")
                check(os.path.getsize(path) - 8 - header <= 100_000,
                      f"{case}: {path} holds more than 100 kB of tensors")
            theirs, ours = tensor_bytes(reference), tensor_bytes(out)
            check(set(theirs) == set(ours), f"{case}: names differ: {set(theirs) ^ set(ours)}")
            differ = [name for name in theirs if theirs[name] != ours[name]]
            check(not differ, f"{case}: tensors differ after import and export: {differ}")
            loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
                out, output_loading_info=True, attn_implementation="eager")
            check(not info["missing_keys"] and not info["unexpected_keys"],
                  f"{case}: transformers loading the export: {info}")
            check(type(loaded) is type(model), f"{case}: export loads as {type(loaded).__name__}")
            with torch.no_grad():
                got = loaded.to(torch.float32).eval()(tokens).logits
            check(torch.equal(got, expected), f"{case}: the export's logits differ (config.json)")
            print(f"{case}: identical tensors; transformers loads the export, same logits")

    # Refusals, each one line naming the field, before any rank starts work.
    qwen_dir = os.path.join(tmp, "ref_qwen2_False")
    sets = sparsering_overrides("qwen2", "yarn")

    def import_edited(name, edit, *extra):
        edited = os.path.join(tmp, name)
        subprocess.run(["cp", "-r", qwen_dir, edited], check=True)
        with open(os.path.join(edited, "config.json")) as f:
            config = json.load(f)
        edit(config)
        with open(os.path.join(edited, "config.json"), "w") as f:
            json.dump(config, f)
        return sparsering("import-hf", "--hf-dir", edited, "--run-dir",
                          os.path.join(tmp, "run_" + name), *sets, *extra)

    process = import_edited("sliding", lambda c: c.update(use_sliding_window=True,
                                                          sliding_window=128))
    errors = [line for line in process.stderr.splitlines() if "sparsering: error" in line]
    check(process.returncode == 2 and len(errors) == 1 and "use_sliding_window" in errors[0],
          "sliding-window attention must be refused by name, in one line", process)
    process = import_edited("dynamic", lambda c: c["rope_parameters"].update(rope_type="dynamic"))
    check(process.returncode == 2 and '"dynamic"' in process.stderr,
          "an unknown RoPE type must be refused by name", process)
    process = import_edited("mrope", lambda c: c["rope_parameters"].update(mrope_section=[1, 2]))
    check(process.returncode == 2 and "mrope_section" in process.stderr,
          "an unknown RoPE field must be refused by name", process)
    process = sparsering("import-hf", "--hf-dir", qwen_dir, "--run-dir",
                         os.path.join(tmp, "run_theta"), *sets, "--set", "model.rope_theta=5e6")
    check(process.returncode == 2 and "--set model.rope_theta=1000000" in process.stderr,
          "a RoPE mismatch must name the --set override", process)
    process = sparsering("import-hf", "--hf-dir", qwen_dir, "--run-dir",
                         os.path.join(tmp, "run_llama_shape"), *sparsering_overrides("llama", "yarn"),
                         "--set", "model.rope_theta=1e6", "--set", "model.tie_embeddings=true")
    check(process.returncode == 2 and "--set model.attention_bias=true" in process.stderr,
          "Qwen2 biases into a model without them must name the --set override", process)

    # Context extension: the run's RoPE replaces the checkpoint's, and both records show it.
    extended = os.path.join(tmp, "run_extended")
    extension = [*sets, "--set", "model.rope_override=true", "--set", "model.rope_theta=5e6"]
    process = sparsering("import-hf", "--hf-dir", qwen_dir, "--run-dir", extended, *extension)
    check(process.returncode == 0 and "model.rope_theta 5000000" in process.stdout,
          "import-hf with model.rope_override must accept and report the new rope_theta", process)
    with open(os.path.join(extended, "config.pbtxt")) as f:
        check("rope_theta: 5000000" in f.read(), "config.pbtxt must record the new rope_theta")
    out = os.path.join(tmp, "out_extended")
    process = sparsering("export-hf", "--checkpoint", "auto", "--run-dir", extended, "--out", out,
                         *extension)
    check(process.returncode == 0, "export of the extended run failed", process)
    with open(os.path.join(out, "config.json")) as f:
        exported = json.load(f)
    check(exported["rope_theta"] == 5e6 and exported["rope_scaling"]["rope_type"] == "yarn"
          and exported["rope_scaling"]["original_max_position_embeddings"] == 512,
          f"config.json must hold the run's resolved RoPE: {exported}")


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
        family_round_trips(tmp)
print("PASSED")

#!/usr/bin/env python3
"""GPU check of the Hugging Face model families (issue 18): bf16 mean loss against transformers.

For each family, a random model made by transformers (Llama: llama3 RoPE, untied; Qwen2: yarn
RoPE, tied, q/k/v biases; hidden 512, 4 heads of dim 128, 2 KV heads, 2 layers, vocabulary 4096)
is imported with `sparsering import-hf` (train.dtype BFLOAT16, one GPU) and evaluated with
`sparsering eval --attention dense` on one random sequence of each length; transformers runs
the same weights in bf16 with sdpa attention on the same GPU (and in fp32 as a reference for
scale where a fused fp32 kernel exists). Passes when |ours - transformers bf16| <= --tolerance x the loss. With --train, the
Qwen2.5-3B-shaped config (q/k/v biases, configs/qwen2_5_3b_shape.pbtxt) then trains a few steps
at 64K tokens with sparse ring attention and its losses are recorded. Prints a table and writes
JSON under bench/results/.

  .venv/bin/python3 bench/hf_family_gpu.py --binary build/sparsering [--lengths 32768,131072]
                    [--train] [--json bench/results/hf_family_gpu_<date>.json]

--device cpu --lengths 2048 runs the same steps on the CPU (a smoke test of this script only).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
sys.path.insert(0, os.path.join(ROOT, "launch"))
from hf_models import random_model, sparsering_overrides  # noqa: E402
from prepare_data import write_shard  # noqa: E402

SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=4096, max_position_embeddings=131072,
             initializer_range=0.05)  # confident but not saturated predictions (loss < ln 4096)
CASES = (("llama", "llama3"), ("qwen2", "yarn"))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True, help="the build's sparsering")
    parser.add_argument("--lengths", default="32768,131072")
    parser.add_argument("--tolerance", type=float, default=1e-2,
                        help="relative bf16 tolerance on the mean loss (default 1e-2)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--train", action="store_true",
                        help="also train the Qwen2.5-3B-shaped config at 64K for a few steps")
    parser.add_argument("--train-config", default=os.path.join(ROOT, "configs",
                                                                "qwen2_5_3b_shape.pbtxt"))
    parser.add_argument("--json", default=os.path.join(
        ROOT, "bench", "results", f"hf_family_gpu_{datetime.date.today().isoformat()}.json"))
    return parser.parse_args()


def sparsering(binary, command, *options):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    process = subprocess.run(["mpirun", "-np", "1", "--bind-to", "none", binary, command,
                              *options], capture_output=True, text=True, env=env)
    if process.returncode != 0:
        sys.exit(f"sparsering {command} failed:\n{process.stdout[-3000:]}\n{process.stderr[-3000:]}")
    return process


def transformers_loss(model, tokens, dtype, attention, device):
    """Mean next-token loss of transformers (logits of all positions at once: the vocabulary is
    small enough that 128K x 4096 fp32 logits fit on the GPU)."""
    model = model.to(device, dtype)
    model.set_attn_implementation(attention)
    # Fused sdpa backends only: the math fallback (the one fp32 would get) materialises the
    # L x L scores, 64 GiB per head at 128K. Without a fused kernel this fails by name, not OOM.
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with torch.no_grad(), sdpa_kernel(fused if device == "cuda" else [SDPBackend.MATH]):
        loss = model(tokens[None].to(device), labels=tokens[None].to(device)).loss.item()
    model.to("cpu", torch.float32)
    if device == "cuda":
        torch.cuda.empty_cache()
    return loss


def fp32_reference(model, tokens, device):
    """transformers in fp32, for the scale of bf16 rounding only (the check is against bf16).
    On a GPU no fused sdpa kernel takes fp32 with grouped KV heads (flash and cuDNN are 16-bit
    only), and the math kernel would need the L x L scores: then None, printed as n/a."""
    try:
        return transformers_loss(model, tokens, torch.float32, "sdpa", device)
    except RuntimeError as error:
        if "No available kernel" not in str(error):
            raise
        print(f"fp32 reference at {tokens.numel()} tokens: no fused fp32 sdpa kernel on this GPU",
              flush=True)
        model.to("cpu", torch.float32)
        return None


def compare(args, tmp):
    rows = []
    lengths = [int(n) for n in args.lengths.split(",")]
    for family, rope in CASES:
        model = random_model(family, rope, seed=3, shape=SHAPE)
        hf_dir = os.path.join(tmp, f"hf_{family}")
        model.save_pretrained(hf_dir)
        sets = sparsering_overrides(family, rope, SHAPE) + [
            "--set", "train.dtype=BFLOAT16", "--set", f"train.device={args.device.upper()}",
            "--set", "parallel.context_parallel_size=1", "--set", "parallel.data_parallel_size=1",
            "--set", "train.micro_batch_size=1", "--set", "attention.block_size=128"]
        run_dir = os.path.join(tmp, f"run_{family}")
        sparsering(args.binary, "import-hf", "--hf-dir", hf_dir, "--run-dir", run_dir, *sets)
        for length in lengths:
            tokens = torch.randint(0, SHAPE["vocab_size"], (length,),
                                   generator=torch.Generator().manual_seed(length))
            shards = os.path.join(tmp, f"shards_{length}")
            if not os.path.isdir(shards):
                os.makedirs(shards)
                write_shard(os.path.join(shards, "shard_00000.srtok"), [tokens.tolist()],
                            SHAPE["vocab_size"])
            sparsering(args.binary, "eval", "--checkpoint", "auto", "--run-dir", run_dir,
                       "--attention", "dense", "--eval-sequences", "1", *sets,
                       "--set", f"train.sequence_length={length}",
                       "--set", "data.source=TOKEN_SHARDS", "--set", f"data.path={shards}",
                       "--set", "data.shuffle=false")
            with open(os.path.join(run_dir, "eval.json")) as f:
                ours = json.load(f)["attention"]["dense"]["loss"]
            theirs = transformers_loss(model, tokens, torch.bfloat16, "sdpa", args.device)
            fp32 = fp32_reference(model, tokens, args.device)
            difference = abs(ours - theirs) / theirs
            rows.append(dict(family=family, rope=rope, tokens=length, sparsering_bf16=ours,
                             transformers_sdpa_bf16=theirs, transformers_sdpa_fp32=fp32,
                             relative_difference=difference, passed=difference <= args.tolerance))
            fp32_text = "n/a" if fp32 is None else f"{fp32:.5f}"
            print(f"{family:6} {rope:7} {length:>7}  ours {ours:.5f}  transformers bf16 "
                  f"{theirs:.5f}  fp32 {fp32_text}  |ours-bf16|/bf16 {difference:.2e}  "
                  f"{'ok' if rows[-1]['passed'] else 'FAIL'}", flush=True)
    return rows


def train(args, tmp):
    run_dir = os.path.join(tmp, "train_3b")
    env = dict(os.environ, SPARSERING_BIN=os.path.abspath(args.binary))
    process = subprocess.run([os.path.join(ROOT, "launch", "train.sh"), args.train_config,
                              "--run-dir", run_dir, "--set", "train.sequence_length=65536",
                              "--set", "train.steps=4"], capture_output=True, text=True, env=env)
    print(process.stdout[-2000:], process.stderr[-2000:])
    metrics = []
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            metrics = [json.loads(line) for line in f]
    return dict(config=os.path.relpath(args.train_config, ROOT), sequence_length=65536,
                returncode=process.returncode, metrics=metrics,
                passed=process.returncode == 0 and len(metrics) == 4)


def main():
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("hf_family_gpu.py needs a GPU (or --device cpu for a smoke run)")
    with tempfile.TemporaryDirectory(prefix="hf-family-gpu-") as tmp:
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        report = dict(device=device, tolerance=args.tolerance,
                      shape=SHAPE, loss=compare(args, tmp))
        if args.train:
            report["train"] = train(args, tmp)
            print(f"3B-shaped training at 64K: {'ok' if report['train']['passed'] else 'FAIL'}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"written {args.json}")
    passed = all(row["passed"] for row in report["loss"]) and report.get("train", {}).get(
        "passed", True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
